"""The training recipe through its real entry point (`cli/train.py`), on CPU: ZeRO-2 and ZeRO-3, one and two
processes, export, kill -9 + resume, and the bad-input messages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r2g.config import RunConfig
from r2g.demo.toys import TINY_VISION_KWARGS
from r2g.dist import free_port

from .damage import spoil_image


ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _args(assets: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--llm", str(assets / "llm"), "--shards", str(assets / "shards"), "--out", str(out),
        "--vision-arch", "swin_tiny_patch4_window7_224", "--vision-kwargs", json.dumps(TINY_VISION_KWARGS),
        "--vision-weights", "none",
        "--image-size", "64", "--micro-batch", "4", "--workers", "1", "--log-every", "1", "--warmup-steps", "1",
        "--num-beams", "2", "--min-new-tokens", "2", "--max-new-tokens", "6", *extra,
    ]


def train(assets: Path, out: Path, *extra: str, procs: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    if procs == 1:
        cmd = [sys.executable, str(ROOT / "cli" / "train.py")]
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(procs), "--master_port", str(free_port()),
               str(ROOT / "cli" / "train.py")]
    result = subprocess.run(cmd + _args(assets, out, *extra), capture_output=True, text=True, env=_env(), timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_zero2_trains_validates_and_exports_a_rebuildable_run(assets, tmp_path):
    out = tmp_path / "run"
    result = train(assets, out, "--ds", "ds_configs/zero2.json", "--mode", "delta", "--max-steps", "4",
                   "--save-every", "2", "--val-every", "2", "--val-samples", "4")
    assert "ZeRO-2" in result.stdout and "vision LoRA" in result.stdout
    cfg = RunConfig.load(out / "r2g_config.json")
    assert cfg.model.mode == "delta" and cfg.data.dataset == "iu_xray" and cfg.model.max_report_tokens == 60
    meta = json.loads((out / "r2g_config.json").read_text())["meta"]
    assert len(meta["llm_config_sha256"]) == 64

    weights = load_file(out / "trainable.safetensors")
    names = sorted(weights)
    assert names and all(n.startswith("mapper.") or "lora_" in n for n in names)
    assert any("lora_" in n for n in names) and any(n.startswith("mapper.") for n in names)
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "bleu4_cider" and best["step"] in (2, 4) and "BLEU_4" in best["scores"]
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step00000002", "step00000004"]
    assert sorted(losses(out)) == [1, 2, 3, 4]


def test_zero0_fp32_exports_the_weights_its_optimizer_steps(assets, tmp_path):
    """ZeRO-0 in fp32 keeps no separate fp32 masters (DeepSpeed's helper returns None there): the export is the
    module's own weights, the ones the checkpoint holds."""
    ds = json.loads((ROOT / "ds_configs" / "zero2.json").read_text())
    ds["zero_optimization"] = {"stage": 0}
    (tmp_path / "zero0.json").write_text(json.dumps(ds))
    out = tmp_path / "run"
    result = train(assets, out, "--ds", str(tmp_path / "zero0.json"), "--precision", "fp32", "--mode", "shallow",
                   "--max-steps", "2", "--save-every", "2", "--val-samples", "-1")
    assert "ZeRO-0, fp32" in result.stdout
    exported = load_file(out / "trainable.safetensors")
    saved = torch.load(out / "checkpoints" / "step00000002" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert sorted(exported) == sorted(saved) and all(n.startswith("mapper.") for n in exported)
    for name, weight in exported.items():
        assert weight.dtype == torch.float32 and torch.equal(weight, saved[name]), name

    # A resume loads r2g's state into the torch optimizer itself (no ZeRO partitions to scatter into) and goes on.
    resumed = train(assets, out, "--ds", str(tmp_path / "zero0.json"), "--precision", "fp32", "--mode", "shallow",
                    "--max-steps", "3", "--save-every", "2", "--val-samples", "-1", "--resume")
    assert "resumed at step 2" in resumed.stdout and sorted(losses(out)) == [1, 2, 3]
    state = torch.load(out / "checkpoints" / "step00000003" / "r2g_state.pt", weights_only=False)
    assert float(state["step"]) == 3 and state["counters"]["global_steps"] == 3
    assert not torch.equal(state["masters"]["mapper.proj.weight"], saved["mapper.proj.weight"])


def test_loss_falls_on_generated_data(assets, tmp_path):
    out = tmp_path / "run"
    train(assets, out, "--ds", "ds_configs/zero2.json", "--mode", "shallow", "--lr", "1e-2", "--max-steps", "30",
          "--val-samples", "-1", "--save-every", "100")
    curve = list(losses(out).values())
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < first - 0.2, curve


def test_zero3_partitions_the_frozen_llm_across_two_processes(assets, tmp_path):
    one = train(assets, tmp_path / "one", "--ds", "ds_configs/zero3.json", "--max-steps", "2", "--val-samples", "-1")
    assert "ZeRO-3" in one.stdout and "(100%)" in one.stdout
    out = tmp_path / "two"
    two = train(assets, out, "--ds", "ds_configs/zero3.json", "--max-steps", "2", "--val-samples", "2", "--val-every", "2",
                procs=2)
    assert "rank 0 of 2" in two.stdout
    held = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert held["llm_weights_held"] <= held["llm_weights_total"] * 0.55  # about half each; never a full copy
    assert (out / "trainable.safetensors").is_file()


def test_zero2_two_processes(assets, tmp_path):
    out = tmp_path / "run"
    result = train(assets, out, "--ds", "ds_configs/zero2.json", "--max-steps", "3", "--val-samples", "-1", procs=2)
    assert "rank 0 of 2" in result.stdout and "3 steps/epoch" in result.stdout  # 24 studies / (2 ranks x 4)
    assert sorted(losses(out)) == [1, 2, 3]
    # each rank's own generators, beside DeepSpeed's state (whose client state only rank 0 writes)
    rng = sorted(p.name for p in (out / "checkpoints" / "step00000003").glob("rng_rank*"))
    assert rng == ["rng_rank00000.pt", "rng_rank00001.pt"]


def test_samples_that_do_not_decode_on_either_rank_are_logged_and_counted_by_rank_0(assets, tmp_path):
    """--skip-damaged-shards: consecutive samples go to different ranks, so rank 1 meets s0004 and rank 0 s0003;
    rank 0, which alone logs, must still name and count both."""
    shards = tmp_path / "shards"
    shutil.copytree(assets / "shards", shards)
    for key in ("s0003", "s0004"):
        spoil_image(shards / "train-000000.tar", f"{key}.0.png")
    out = tmp_path / "run"
    result = train(assets, out, "--shards", str(shards), "--skip-damaged-shards", "--ds", "ds_configs/zero2.json",
                   "--max-steps", "6", "--val-samples", "-1", procs=2)
    for key in ("s0003", "s0004"):
        assert f"sample {key} does not decode; skipped" in result.stdout, result.stdout[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "loss" in r][-1]["lost_samples"] == 2


def test_kill_9_then_resume_reproduces_the_uninterrupted_run(assets, tmp_path):
    common = ("--ds", "ds_configs/zero2.json", "--mode", "delta", "--lora-dropout", "0.3", "--max-steps", "40",
              "--save-every", "5", "--val-samples", "-1")
    reference = tmp_path / "reference"
    train(assets, reference, *common)

    out = tmp_path / "crashed"
    cmd = [sys.executable, str(ROOT / "cli" / "train.py"), *_args(assets, out, *common)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step00000010").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = max(losses(out))
    assert done < 40, "the run finished before it could be killed; the test needs more steps"

    resumed = train(assets, out, *common, "--resume")
    restart = int(resumed.stdout.split("resumed at step ")[1].split()[0])
    assert restart % 5 == 0 and done - restart < 5 + 1  # lost at most the steps since the last save
    ref, got = losses(reference), losses(out)
    for step in range(restart + 1, 41):
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step


def test_bad_inputs_say_what_to_fix(assets, tmp_path):
    r = train(assets, tmp_path / "a", "--llm", str(tmp_path / "no-such-llm"), "--val-samples", "-1", check=False)
    assert r.returncode == 2 and "--llm" in r.stdout and "Traceback" not in r.stdout + r.stderr

    conflicting = tmp_path / "ds.json"
    ds = json.loads((ROOT / "ds_configs" / "zero2.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = 3
    conflicting.write_text(json.dumps(ds))
    r = train(assets, tmp_path / "b", "--ds", str(conflicting), "--val-samples", "-1", check=False)
    assert r.returncode == 2 and "train_micro_batch_size_per_gpu is 3 but --micro-batch gives 4" in r.stdout

    no_val = tmp_path / "shards-no-val"
    no_val.mkdir()
    manifest = json.loads((assets / "shards" / "manifest.json").read_text())
    manifest["splits"].pop("val")
    (no_val / "manifest.json").write_text(json.dumps(manifest))
    for tar in (assets / "shards").glob("train-*.tar"):
        (no_val / tar.name).symlink_to(tar)
    r = train(assets, tmp_path / "c", "--shards", str(no_val), check=False)
    assert r.returncode == 2 and "no 'val' shards" in r.stdout and "--val-samples -1" in r.stdout

    r = train(assets, tmp_path / "d", "--select-metric", "accuracy", check=False)
    assert r.returncode == 2 and "--select-metric 'accuracy' is unknown" in r.stdout


def test_reference_recipe_trains_bf16_mixed_on_the_per_epoch_cosine(assets, tmp_path):
    """r2gengpt-iu-shallow with a smaller global batch: 24 studies / (4 × 2 accumulation) = 3 steps an epoch."""
    out = tmp_path / "run"
    result = train(assets, out, "--recipe", "r2gengpt-iu-shallow", "--micro-batch", "4", "--global-batch", "8",
                   "--epochs", "2", "--val-samples", "2")
    assert "bf16-mixed" in result.stdout and "3 steps/epoch" in result.stdout
    cfg = RunConfig.load(out / "r2g_config.json")
    assert (cfg.train.recipe, cfg.train.grad_accum, cfg.model.keep_eos) == ("r2gengpt-iu-shallow", 2, False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in rows if "lr" in r}  # the lr the next step will use
    assert lr[1] == lr[2] == pytest.approx(1e-4) and lr[3] == lr[5] == pytest.approx((1e-4 + 1e-6) / 2)
    weights = load_file(out / "trainable.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())  # fp32 trainables under bf16 autocast
    assert json.loads((out / "best.json").read_text())["step"] in (3, 6)  # validated (in bf16-mixed) each epoch
