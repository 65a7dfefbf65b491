"""The benches' CPU paths, end to end in subprocesses (as they are run): the per-mode training-step bench at
tiny shapes and the batched vs one-at-a-time generation bench on the tiny random model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from r2g.config import PROMPT, ModelConfig
from r2g.demo.toys import TINY_VISION_KWARGS
from r2g.model.prompt import IMAGE_CLOSE, IMAGE_OPEN

from .test_train import ROOT, _env

pytestmark = pytest.mark.slow


def run_bench(script: str, out: Path, *args: str) -> dict:
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--json", str(out), *args],
                            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_train_step_per_mode_at_tiny_shapes(tmp_path):
    from bench.shapes import stand_in_tokenizer

    r = run_bench("train_step.py", tmp_path / "r.json", "--llm-shapes", "tiny", "--steps", "2", "--warmup", "1")
    modes = {row["mode"]: row for row in r["modes"]}
    assert list(modes) == ["shallow", "delta", "deep"]
    # [bos] + "Human: <Img>" + visual tokens + "</Img> {prompt} \nAssistant:" + a report filling its budget.
    tok = stand_in_tokenizer()
    text = len(tok(IMAGE_OPEN, add_special_tokens=False)["input_ids"]) + len(
        tok(f"{IMAGE_CLOSE}{PROMPT} \nAssistant:", add_special_tokens=False)["input_ids"])
    visual = (TINY_VISION_KWARGS["img_size"] // 32) ** 2  # patch 4, three 2x merges: a 2 x 2 grid
    expected = 1 + text + visual + ModelConfig().max_report_tokens
    for row in modes.values():
        assert row["seq_len"] == expected and row["micro_batch"] == 6
        assert row["tokens_per_s"] > 0 and row["samples_per_s"] > 0 and row["tflops_per_gpu"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["samples_per_s"] * expected)
        assert row["mfu"] is None and row["max_mem_gib"] is None  # CPU: no peak to compare with
    assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["peak_tflops"] is None
    # shallow trains the mapper; delta adds Swin q/v LoRA; deep trains all of Swin.
    assert modes["shallow"]["trainable_params"] < modes["delta"]["trainable_params"] < modes["deep"]["trainable_params"]


def test_generate_batched_vs_single_on_the_tiny_model(tmp_path):
    r = run_bench("generate.py", tmp_path / "g.json", "--reports", "4", "--batch-size", "2", "--new-tokens", "5")
    batched, single = r["batched"], r["single"]
    assert (batched["batch_size"], single["batch_size"]) == (2, 1)
    assert batched["reports"] == single["reports"] == 4
    assert batched["tokens"] == single["tokens"] == 4 * 5  # min = max new tokens: every report is 5 tokens
    for x in (batched, single):
        assert x["reports_per_s"] > 0 and x["tokens_per_s"] > 0
    assert r["speedup"] == pytest.approx(batched["reports_per_s"] / single["reports_per_s"])
    assert r["generate"]["num_beams"] == 3 and r["generate"]["repetition_penalty"] == 2.0
    assert [c["num_beams"] for c in r["batched_equals_single"]] == [3, 1]
    # Generation prompts have no padding, so batching must not change a report (beam search or greedy).
    assert [(c["equal"], c["of"]) for c in r["batched_equals_single"]] == [(4, 4), (4, 4)]


def test_roc_auc_on_hand_computed_cases():
    import torch

    from bench.encoder_probe import roc_auc

    y = torch.tensor([0, 0, 1, 1])
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4 ordered right
    assert roc_auc(y, torch.tensor([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(y, torch.tensor([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)  # ties count half
    assert roc_auc(y, torch.tensor([0.9, 0.8, 0.2, 0.1])) == pytest.approx(0.0)
    assert roc_auc(torch.tensor([1, 1]), torch.tensor([0.1, 0.2])) is None  # one class: undefined


def test_encoder_probe_on_generated_shards(tmp_path):
    from r2g.data.shard import ShardOptions, shard_dataset
    from r2g.demo.dataset import generate

    generate(tmp_path / "data", studies=60, style="mimic", seed=0, image_size=64, workers=1)
    shard_dataset(tmp_path / "data" / "annotation.json", tmp_path / "data" / "images", tmp_path / "shards",
                  ShardOptions("mimic_cxr", shard_size=50))
    r = run_bench("encoder_probe.py", tmp_path / "p.json", "--shards", str(tmp_path / "shards"), "--image-size", "64",
                  "--vision-arch", "swin_tiny_patch4_window7_224", "--vision-kwargs", json.dumps(TINY_VISION_KWARGS),
                  "--steps", "5")
    assert r["studies"]["train"] > r["studies"]["test"] > 0
    assert r["visual_tokens"] == [4, 256]  # 64 px, patch 4, three 2x merges: 2 x 2 tokens of 32 * 8 channels
    for probe in ("grid", "per_token"):
        aucs = r["auc"][probe]
        assert len(aucs) == 14
        for label, auc in aucs.items():
            assert (auc is None) == (r["positives_test"][label] in (0, r["studies"]["test"]))
            assert auc is None or 0.0 <= auc <= 1.0
