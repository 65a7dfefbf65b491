"""A crash inside a checkpoint save: the training process is SIGKILLed at chosen points of its second save,
then `--resume` must start from the first save and finish the run.

The kill comes from inside the real save: the child runs cli/train.py with torch.save and open wrapped so
that they kill the process at that point; nothing in r2g knows about it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from r2g.config import RunConfig

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


# argv: cli/train.py ARGS...  Validation is stood in for by the scores in R2G_TEST_SCORES (one per validation of
# this launch, in order); with R2G_TEST_KILL_AFTER_EXPORTS=N the process is SIGKILLed right after its N-th export.
SCRIPTED_TRAIN = r"""
import os, runpy, sys
import r2g.train.loop as loop

scores = [float(s) for s in os.environ["R2G_TEST_SCORES"].split(",")]
def validate(*args, **kwargs):
    value = scores.pop(0)
    return {"BLEU_4": value, "CIDEr": value}, []
loop.validate = validate

exports, export = [], loop.export_trainable
def export_trainable(*args, **kwargs):
    export(*args, **kwargs)
    exports.append(1)
    if len(exports) == int(os.environ.get("R2G_TEST_KILL_AFTER_EXPORTS", 0)):
        os.kill(os.getpid(), 9)
loop.export_trainable = export_trainable

sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def scripted(assets, out, scores: str, *extra: str, kill_after_exports: int = 0) -> subprocess.CompletedProcess:
    env = {**_env(), "R2G_TEST_SCORES": scores, "R2G_TEST_KILL_AFTER_EXPORTS": str(kill_after_exports)}
    cmd = [sys.executable, "-c", SCRIPTED_TRAIN, str(ROOT / "cli" / "train.py"), *_args(assets, out, *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_a_better_export_made_after_the_last_checkpoint_survives_the_resume(assets, tmp_path):
    """Validated at steps 1-3 (scores 0.1, 0.2, 0.9), checkpointed at step 2, killed right after the step-3
    export. The resume starts at step 2, validates at 4 and 5 (0.5, 0.6): both beat the checkpoint's best (0.2)
    but not the export's (0.9), which must stay. The resume also shows the run record at work: a changed --mode
    is refused, a changed --max-steps and --val-every are taken and recorded at step 2."""
    out = tmp_path / "run"
    common = ("--ds", "ds_configs/zero2.json", "--mode", "shallow", "--save-every", "2", "--val-samples", "2")
    killed = scripted(assets, out, "0.1,0.2,0.9", *common, "--max-steps", "4", "--val-every", "1", kill_after_exports=3)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert (out / "checkpoints" / "latest").read_text() == "step00000002"
    export = (out / "trainable.safetensors").read_bytes()
    assert json.loads((out / "best.json").read_text())["step"] == 3

    refused = scripted(assets, out, "0.5", *common, "--max-steps", "4", "--val-every", "1", "--mode", "delta",
                       "--resume")
    assert refused.returncode == 2 and "--mode was 'shallow', now 'delta'" in refused.stdout, refused.stdout[-2000:]

    resumed = scripted(assets, out, "0.5,0.6", *common, "--max-steps", "5", "--val-every", "4", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resumed at step 2" in resumed.stdout and max(losses(out)) == 5
    assert "val/select" in (out / "metrics.jsonl").read_text()
    assert (out / "trainable.safetensors").read_bytes() == export  # the step-3 weights, not step 4's or 5's
    assert json.loads((out / "best.json").read_text())["value"] == 0.9
    assert "best bleu4_cider 0.9000 at step 3" in resumed.stdout

    cfg, meta = RunConfig.load_record(out / "r2g_config.json")
    assert (cfg.train.max_steps, cfg.train.val_every, cfg.model.mode) == (5, 4, "shallow")
    assert meta["changes"] == [{"step": 2, "settings": {"train.max_steps": [4, 5], "train.val_every": [1, 4]}}]
