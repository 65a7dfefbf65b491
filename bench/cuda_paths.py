"""The code only CUDA reaches, run through r2g's own commands on a tiny synthetic run: bench/gpu_check.py's last
part, whose docstring lists each path and the command here that reaches it. On a CPU the same commands run, so
that gpu_check's test keeps them working; on one GPU they run on one rank, with two or more on two (NCCL), which
the agreement before every raise needs to be exercised at all.

    train-zero3   cli/train.py, ZeRO-3, LLM stored in bf16 (several safetensors files), delta mode, validated
                  and exported at step 2, checkpointed
    resume        cli/train.py --resume with a changed --max-steps
    eval-zero3    r2g eval --ds ds_configs/zero3.json (the LLM partitioned)
    generate      r2g generate (the whole model on the device)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("train-zero3", "resume", "eval-zero3", "generate")


def write_assets(root: Path) -> tuple[Path, Path]:
    """(shards, LLM folder): a tiny IU-Xray-style dataset and a tiny Llama whose weights are stored in bf16, in
    several safetensors files, as Llama-3 / Qwen2 / Mistral ship them."""
    from transformers import AutoModelForCausalLM

    from r2g.data.shard import ShardOptions, shard_dataset
    from r2g.demo.toys import write_raw_dataset, write_tiny_llm

    raw = write_raw_dataset(root / "raw", per_split=(24, 6, 4), size=64)
    shard_dataset(raw, raw.parent / "images", root / "shards", ShardOptions("iu_xray", shard_size=8))
    corpus = [e["report"] for e in json.loads(raw.read_text())["train"]] * 5
    llm = write_tiny_llm(root / "llm", corpus)
    bf16 = AutoModelForCausalLM.from_pretrained(llm, dtype=torch.bfloat16)
    for f in llm.glob("*.safetensors"):
        f.unlink()
    bf16.save_pretrained(llm, max_shard_size="100KB")
    return root / "shards", llm


def _launch(procs: int, *target: str) -> list[str]:
    """`target` (a script, or -m and a module) as one process, or on `procs` local ranks (torchrun)."""
    if procs == 1:
        return [sys.executable, *target]
    from r2g.dist import free_port

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
            str(free_port()), *target]


def commands(root: Path, shards: Path, llm: Path, procs: int) -> dict[str, list[str]]:
    from r2g.demo.toys import TINY_VISION_KWARGS

    run, image = root / "run", next((root / "raw" / "images").rglob("*.png"))
    train = [*_launch(procs, str(ROOT / "cli" / "train.py")), "--llm", str(llm), "--shards", str(shards),
             "--out", str(run), "--ds", "ds_configs/zero3.json", "--mode", "delta",
             "--vision-arch", "swin_tiny_patch4_window7_224", "--vision-kwargs", json.dumps(TINY_VISION_KWARGS),
             "--vision-weights", "none", "--image-size", "64", "--micro-batch", "4", "--workers", "1",
             "--log-every", "1", "--warmup-steps", "1", "--save-every", "2", "--val-every", "2", "--val-samples", "4",
             "--num-beams", "2", "--min-new-tokens", "2", "--max-new-tokens", "6"]
    return {
        "train-zero3": [*train, "--max-steps", "2"],
        "resume": [*train, "--max-steps", "3", "--resume"],
        "eval-zero3": [*_launch(procs, "-m", "r2g.cli"), "eval", "--ckpt", str(run), "--ds", "ds_configs/zero3.json",
                       "--max-samples", "4", "--no-meteor", "--workers", "1", "--out", str(root / "eval")],
        "generate": [*_launch(1, "-m", "r2g.cli"), "generate", str(image), "--ckpt", str(run),
                     "--out", str(root / "reports.jsonl")],
    }


def check(name: str, root: Path) -> str | None:
    """What the command should have left behind, or None when it did."""
    run = root / "run"
    if name == "train-zero3" and not (run / "trainable.safetensors").is_file():
        return "no trainable.safetensors"
    if name == "resume":
        meta = json.loads((run / "r2g_config.json").read_text())["meta"]
        if meta.get("changes") != [{"step": 2, "settings": {"train.max_steps": [2, 3]}}]:
            return f"run record's changes: {meta.get('changes')}"
    if name == "eval-zero3" and json.loads((root / "eval" / "metrics.json").read_text())["studies"] != 4:
        return "eval did not decode 4 studies"
    if name == "generate" and len((root / "reports.jsonl").read_text().splitlines()) != 1:
        return "generate wrote no report"
    return None


def run_paths(root: Path) -> list[dict]:
    """[{path, ok, seconds, device, ranks, error}] for each command of PATHS, in order (each needs the previous)."""
    root.mkdir(parents=True, exist_ok=True)
    shards, llm = write_assets(root)
    cuda = torch.cuda.is_available()
    procs = 2 if cuda and torch.cuda.device_count() >= 2 else 1
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(name, None)
    rows = []
    for name, cmd in commands(root, shards, llm, procs).items():
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        error = (done.stdout + done.stderr)[-1500:] if done.returncode else check(name, root)
        rows.append({"path": name, "ok": error is None, "seconds": time.perf_counter() - t0,
                     "device": "cuda" if cuda else "cpu", "ranks": 1 if name == "generate" else procs, "error": error})
        print(f"{name}: {'ok' if error is None else 'FAILED'} in {rows[-1]['seconds']:.0f} s", flush=True)
        if error is not None:
            break  # each command reads what the previous one wrote
    return rows
