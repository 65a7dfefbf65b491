"""Two nodes on one machine: two torchrun agents (`--nnodes 2 --node_rank 0|1`) meet at one rendezvous and train
one run, which writes each checkpoint once, and resume from it reproduces the steps it had trained; resuming it
on one process without --global-batch (which would halve the global batch) is refused."""

from __future__ import annotations

import json
import sys

import pytest

from r2g.dist import free_port

from .test_train import ROOT, _args, _env, losses, train
from .together import run_together

pytestmark = pytest.mark.slow


def two_nodes(assets, out, *extra: str, tmp_path, name: str) -> list[str]:
    """cli/train.py under one torchrun agent per "node", one rank each; returns each node's log."""
    port = str(free_port())
    commands = [([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(n),
                  "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                  str(ROOT / "cli" / "train.py"), *_args(assets, out, *extra)], _env()) for n in range(2)]
    done = run_together(commands, tmp_path / name, ROOT)
    assert [rc for rc, _ in done] == [0, 0], done[0][1][-3000:] + "\n----\n" + done[1][1][-3000:]
    return [log for _, log in done]


def test_two_nodes_train_one_run_and_resume_it(assets, tmp_path):
    out = tmp_path / "run"
    common = ("--ds", "ds_configs/zero2.json", "--mode", "delta", "--max-steps", "4", "--save-every", "2",
              "--val-samples", "2", "--val-every", "4")
    node0, node1 = two_nodes(assets, out, *common, tmp_path=tmp_path, name="first")
    assert "rank 0 of 2" in node0 and "3 steps/epoch" in node0  # 24 studies / (2 ranks × 4)
    assert "rank 0 of 2" not in node1  # node 1's rank neither logs nor writes the run's files
    first = losses(out)
    assert sorted(first) == [1, 2, 3, 4]

    # Each checkpoint once: the model states and r2g's whole state by rank 0 alone, one optimizer partition and
    # one set of random generator states per rank, nothing else.
    ckpt = out / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step00000002", "step00000004"] and not list(ckpt.glob("partial-*"))
    for tag in ("step00000002", "step00000004"):
        assert sorted(p.name for p in (ckpt / tag).iterdir()) == [
            "mp_rank_00_model_states.pt", "r2g_state.pt", "rng_rank00000.pt", "rng_rank00001.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert (out / "trainable.safetensors").is_file() and json.loads((out / "best.json").read_text())["step"] == 4

    # Back to the checkpoint of step 2 (as `latest` names it after a crash between saves): the two nodes
    # resume from it and train steps 3 and 4 again, to the same losses.
    (ckpt / "latest").write_text("step00000002")
    node0, _ = two_nodes(assets, out, *common, "--resume", tmp_path=tmp_path, name="resumed")
    assert "resumed at step 2" in node0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    starts = [i for i, r in enumerate(rows) if "llm_weights_held" in r]  # each launch logs its first row
    assert [rows[i]["step"] for i in starts] == [0, 2]
    again = {r["step"]: r["loss"] for r in rows[starts[1]:] if "loss" in r}
    assert sorted(again) == [3, 4]
    # Both steps (the loss is the mean over the ranks) are exact: the weights, the optimizer and every rank's own
    # generators are restored, so both nodes draw the same dropout as in the first run.
    assert again[3] == pytest.approx(first[3], rel=1e-5, abs=1e-6)
    assert again[4] == pytest.approx(first[4], rel=1e-5, abs=1e-6)

    # The same run on one process without --global-batch: refused, naming both global batches and the fix.
    one = train(assets, out, *common, "--resume", check=False)
    assert one.returncode == 2 and "global batch is 8 studies per step (2 process(es)" in one.stdout
    assert "Pass --global-batch 8" in one.stdout
    assert "Traceback" not in one.stdout + one.stderr
