"""A crash inside a checkpoint save: the training process is SIGKILLed at chosen points of its second save,
then `--resume` must start from the first save and finish the run.

The kill comes from inside the real save: the child runs cli/train.py with torch.save and open wrapped so
that they kill the process at that point; nothing in r2g knows about it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from .test_train import ROOT, _args, _env, losses, train

pytestmark = pytest.mark.slow

# argv: POINT cli/train.py ARGS...  POINT is "first-file" (the second save's first file is written, then
# the kill) or "latest" (`latest` is opened for writing in the second save, before anything is written).
KILLING_TRAIN = r"""
import builtins, io, os, runpy, sys
from pathlib import Path
import torch

point = sys.argv.pop(1)
tags = []  # the tag folders torch.save has written into, in order

def kill():
    os.kill(os.getpid(), 9)

real_save = torch.save
def save(obj, f, *args, **kwargs):
    tag = Path(f).parent.name
    if tag not in tags:
        tags.append(tag)
    real_save(obj, f, *args, **kwargs)
    if point == "first-file" and len(tags) == 2:
        kill()
torch.save = save

real_open = io.open
def open_(file, mode="r", *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    if point == "latest" and "w" in mode and Path(str(file)).name.startswith("latest") and len(tags) == 2:
        kill()
    return handle
builtins.open = io.open = open_

sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

COMMON = ("--ds", "ds_configs/zero2.json", "--mode", "shallow", "--max-steps", "4", "--save-every", "2",
          "--val-samples", "-1")


@pytest.mark.parametrize("point", ["first-file", "latest"])
def test_kill_9_inside_a_save_keeps_the_previous_checkpoint_and_resume_finishes(assets, tmp_path, point):
    out = tmp_path / "run"
    ckpt = out / "checkpoints"
    cmd = [sys.executable, "-c", KILLING_TRAIN, point, str(ROOT / "cli" / "train.py"), *_args(assets, out, *COMMON)]
    killed = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert max(losses(out)) == 4  # killed in the save of step 4, the last step
    # `latest` still names the first save, whole; no partly written folder carries a checkpoint's name.
    assert (ckpt / "latest").read_text() == "step00000002"
    assert sorted(p.name for p in ckpt.glob("step*") if p.is_dir()) == (
        ["step00000002"] if point == "first-file" else ["step00000002", "step00000004"]  # complete, not yet named
    )

    resumed = train(assets, out, *COMMON, "--resume")
    assert "resumed at step 2" in resumed.stdout
    assert max(losses(out)) == 4
    assert (ckpt / "latest").read_text() == "step00000004"
    ours = sorted(p.name for p in ckpt.iterdir() if p.suffix != ".py")  # DeepSpeed adds its zero_to_*.py scripts
    assert ours == ["latest", "step00000002", "step00000004"]  # no partial folder, no latest.tmp
    assert (out / "trainable.safetensors").is_file() and not list(out.glob("*.tmp"))
