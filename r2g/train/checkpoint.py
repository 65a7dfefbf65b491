"""Resumable DeepSpeed checkpoints and the exported run artefacts.

A run folder holds:
    r2g_config.json           everything needed to rebuild the model (+ the base LLM's config hash)
    trainable.safetensors     only the trained weights (fp32 masters), of the best validation so far
    best.json                 step, selection metric and scores of that export
    checkpoints/<tag>/        DeepSpeed state: ZeRO shards of the trainable weights, optimizer, scheduler,
    checkpoints/latest        and our client state (step, best score, RNG states). The frozen LLM is not
                              written: it is the base model named in r2g_config.json.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from r2g.config import RunConfig

KEEP_CHECKPOINTS = 2  # resumable checkpoints kept on disk; older ones are deleted after a successful save


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_resumable(engine, out: Path, step: int, client_state: dict, rank: int) -> None:
    ckpt = out / "checkpoints"
    engine.save_checkpoint(
        str(ckpt), tag=f"step{step:08d}", client_state={**client_state, "rng": rng_state()}, exclude_frozen_parameters=True
    )
    if rank == 0:
        tags = sorted(p for p in ckpt.glob("step*") if p.is_dir())
        for old in tags[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)


def resume(engine, out: Path) -> dict | None:
    """Load the latest checkpoint if there is one; returns its client state (None when starting fresh)."""
    ckpt = out / "checkpoints"
    if not (ckpt / "latest").is_file():
        return None
    # load_module_strict=False: the frozen LLM weights were left out of the checkpoint on purpose.
    path, client = engine.load_checkpoint(str(ckpt), load_module_strict=False)
    if path is None:
        return None
    set_rng_state(client["rng"])
    return client


def gather_trainable(engine) -> dict[str, torch.Tensor]:
    """Full fp32 master copies of the trainable weights (a collective under ZeRO-3: call on every rank)."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {
        name: safe_get_full_fp32_param(p).detach().cpu().float().contiguous()
        for name, p in engine.module.named_parameters()
        if p.requires_grad
    }


def write_run_config(out: Path, cfg: RunConfig, llm_config_sha256: str) -> None:
    """r2g_config.json, its base paths (LLM, vision weights, shards) made absolute so that the run folder
    rebuilds its model from any working directory."""
    data = cfg.to_dict()
    data["model"]["llm"] = os.path.abspath(cfg.model.llm)
    if cfg.model.vision_weights_file:  # else a random Swin: no path
        data["model"]["vision_weights"] = os.path.abspath(cfg.model.vision_weights_file)
    data["data"]["shards"] = os.path.abspath(cfg.data.shards)
    data["meta"] = {"llm_config_sha256": llm_config_sha256}
    (out / "r2g_config.json").write_text(json.dumps(data, indent=2) + "\n")


def export_trainable(weights: dict[str, torch.Tensor], out: Path, info: dict) -> None:
    tmp = out / "trainable.safetensors.tmp"
    save_file(weights, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "trainable.safetensors")  # atomic: a crash never leaves a half-written export
    (out / "best.json").write_text(json.dumps(info, indent=2) + "\n")
