"""A failure met by one rank stops every rank with the same error (r2g.dist.raise_together), within a minute:
no rank is left waiting in a collective for the one that stopped (a hang until NCCL's 30-minute timeout).

Each test starts two CPU ranks of cli/train.py itself (gloo), with a failure only rank 1 meets, and waits at most
TIMEOUT seconds: a hang fails the test instead of blocking CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from r2g.data.shard import ShardOptions, shard_dataset
from r2g.demo.toys import write_raw_dataset
from r2g.dist import free_port

from .damage import spoil_image
from .test_train import ROOT, _args, _env

pytestmark = pytest.mark.slow
TIMEOUT = 120  # seconds for both ranks to end: 16-33 s alone, wider for a loaded CI; a hang lasts 30 min (NCCL, gloo)

# argv: cli/train.py ARGS...; with R2G_TEST_NAN_RANK set, that rank's every loss is NaN.
TRAIN = r"""
import os, runpy, sys

if os.environ.get("R2G_TEST_NAN_RANK") == os.environ["RANK"]:
    from r2g.model.r2gen import R2GenGPT

    forward = R2GenGPT.forward
    def nan_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out
    R2GenGPT.forward = nan_forward

sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def two_ranks(assets, out, *extra: str, env: dict | None = None) -> list[tuple[int, str]]:
    """(exit status, output) of each of two ranks training into `out`, started as a launcher starts them."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        rank_env = {**_env(), **(env or {}), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"}
        cmd = [sys.executable, "-c", TRAIN, str(ROOT / "cli" / "train.py"), *_args(assets, out, *extra)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=rank_env))
    start, results = time.monotonic(), []
    try:
        for proc in procs:
            output, _ = proc.communicate(timeout=max(1, TIMEOUT - (time.monotonic() - start)))
            results.append((proc.returncode, output))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def assert_both_stop_with(results, message: str) -> None:
    lines = []
    for status, output in results:
        assert status == 2 and "Traceback" not in output, output[-3000:]
        error = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and message in error[0], output[-3000:]
        lines.append(error[0])
    assert lines[0] == lines[1]  # the same error on every rank


COMMON = ("--ds", "ds_configs/zero2.json", "--mode", "shallow", "--val-samples", "-1", "--save-every", "100")


def test_a_nan_loss_on_one_rank_stops_both(assets, tmp_path):
    results = two_ranks(assets, tmp_path / "run", *COMMON, "--max-steps", "3", env={"R2G_TEST_NAN_RANK": "1"})
    assert_both_stop_with(results, "loss is nan at step 1 (mean over 2 rank(s))")


def test_a_sample_that_does_not_decode_in_one_ranks_share_stops_both(assets, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(assets / "shards", shards)
    spoil_image(shards / "train-000000.tar", "s0003.0.png")  # 4th of its shard: rank 1's (samples alternate)
    results = two_ranks(assets, tmp_path / "run", *COMMON, "--shards", str(shards), "--max-steps", "3")
    assert_both_stop_with(results, "on rank 1: ")
    assert "sample s0003 does not decode" in results[0][1]


def test_an_empty_share_on_one_rank_stops_both(assets, tmp_path):
    raw = write_raw_dataset(tmp_path / "raw", per_split=(1, 2, 2), size=64)  # one train study: rank 1 gets none
    shard_dataset(raw, raw.parent / "images", tmp_path / "shards", ShardOptions("iu_xray", shard_size=8))
    results = two_ranks(assets, tmp_path / "run", *COMMON, "--shards", str(tmp_path / "shards"), "--max-steps", "2")
    assert_both_stop_with(results, "on rank 1: a rank's share of the train split is empty")
    assert not (tmp_path / "run" / "checkpoints").exists()
