"""A run folder → the trained model, ready to generate.

The base LLM comes from `r2g_config.json` (or `--llm`), checked against the config hash recorded at
training time; the trained weights come from `trainable.safetensors` (the best validation export) or, with
`checkpoint=`, straight from a DeepSpeed ZeRO checkpoint through DeepSpeed's own consolidation
(`get_fp32_state_dict_from_zero_checkpoint`, the function behind `zero_to_fp32.py`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from r2g.config import RunConfig
from r2g.errors import R2GError


def load_run_config(run: str | Path) -> tuple[RunConfig, dict]:
    path = Path(run) / "r2g_config.json"
    if not path.is_file():
        raise R2GError(f"{path}: not found; --ckpt must be a run folder written by `r2g train` / cli/train.py")
    cfg = RunConfig.load(path)
    meta = json.loads(path.read_text()).get("meta", {})
    return cfg, meta


def zero_checkpoint_weights(run: str | Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """fp32 trainable weights consolidated from the run's DeepSpeed checkpoint (`tag` None = latest)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = Path(run) / "checkpoints"
    if not (ckpt / "latest").is_file() and tag is None:
        raise R2GError(f"{ckpt}: no DeepSpeed checkpoint (no 'latest' file); evaluate trainable.safetensors instead")
    if tag is not None and not (ckpt / tag).is_dir():
        have = ", ".join(sorted(p.name for p in ckpt.glob("step*"))) or "none"
        raise R2GError(f"{ckpt / tag}: no such checkpoint (have: {have})")
    # The frozen LLM was never written into the checkpoint, so only trainable weights come back.
    sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag, exclude_frozen_parameters=True)
    return {k: v.float() for k, v in sd.items()}


def trainable_weights(run: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(run) / "trainable.safetensors"
    if not path.is_file():
        raise R2GError(f"{path}: not found; the run exports it at its first validation (or its end); "
                       "or pass --checkpoint latest to read the DeepSpeed checkpoint")
    return load_file(str(path))


def reconstitute(
    run: str | Path,
    llm: str | None = None,
    checkpoint: str | None = None,
    dtype: torch.dtype = torch.float32,
    allow_llm_mismatch: bool = False,
):
    """(model with trained weights loaded, run config with the LLM path actually used)."""
    from r2g.model.llm import config_hash
    from r2g.model.r2gen import build_model

    cfg, meta = load_run_config(run)
    llm_path = llm or cfg.model.llm
    recorded, actual = meta.get("llm_config_sha256"), config_hash(llm_path)
    if recorded and recorded != actual and not allow_llm_mismatch:
        raise R2GError(
            f"{llm_path}: its config.json differs from the base LLM this run was trained on (sha256 "
            f"{actual[:12]}… vs {recorded[:12]}…); pass the right --llm, or --allow-llm-mismatch to go ahead anyway"
        )
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, llm=llm_path))
    model = build_model(cfg.model, dtype=dtype)
    if checkpoint is None:
        weights = trainable_weights(run)
    else:
        weights = zero_checkpoint_weights(run, None if checkpoint == "latest" else checkpoint)
    model.load_trainable_state_dict(weights)
    model.eval()
    return model, cfg
