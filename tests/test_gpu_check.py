"""bench/gpu_check.py's code path on the CPU at tiny shapes (the GPU run itself needs a GPU): every row it
writes, the plan beside each, the ZeRO-3 step, generation, the commands that reach the CUDA-only paths, and the
markdown."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .test_bench import check_provenance
from .test_train import ROOT, _env

pytestmark = pytest.mark.slow


def test_gpu_check_runs_at_tiny_shapes_on_cpu(tmp_path):
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--llm-shapes", "tiny", "--steps", "1", "--warmup", "0",
         "--micro-batch", "2", "--reports", "2", "--gen-batch", "2", "--new-tokens", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    check_provenance(r["provenance"])  # measured now, here, at this commit
    rows = [(x["zero_stage"], x["mode"], x["grad_ckpt"]) for x in r["steps"]]
    assert rows == [(2, "shallow", False), (2, "delta", False), (2, "deep", False),
                    (2, "shallow", True), (2, "delta", True), (2, "deep", True), (3, "shallow", False)]
    for x in r["steps"]:
        assert x["micro_batch"] == 2 and x["step_ms"] > 0 and x["tokens_per_s"] > 0
        assert x["plan_total_gib"] > x["plan_tensors_gib"] > 0
        assert x["mfu"] is None and "allocated_vs_plan" not in x  # no CUDA peaks on a CPU
    by = {(x["zero_stage"], x["mode"], x["grad_ckpt"]): x for x in r["steps"]}
    # checkpointing shrinks the planned activations; the trainable count does not depend on it
    assert by[(2, "deep", True)]["plan_activations_gib"] < by[(2, "deep", False)]["plan_activations_gib"]
    assert by[(2, "deep", True)]["trainable_params"] == by[(2, "deep", False)]["trainable_params"]
    g = r["generation"]
    assert (g["reports"], g["batch_size"], g["num_beams"], g["tokens"]) == (2, 2, 3, 2 * 3)
    # The CUDA-only paths, run here on the CPU through the same commands: each works and leaves what it should.
    assert [(p["path"], p["ok"], p["device"]) for p in r["paths"]] == [
        (name, True, "cpu") for name in ("train-zero3", "resume", "eval-zero3", "generate")], r["paths"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.splitlines()[2].startswith(r["provenance"]["date"][:10])  # the header under the title
    assert md.count("\n| 2 |") == 6 and md.count("\n| 3 |") == 1 and "reports/s" in md
    assert md.count(" | cpu | 1 | ok |") == 4
