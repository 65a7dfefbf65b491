"""Resumable DeepSpeed checkpoints and the exported run artefacts.

A run folder holds:
    r2g_config.json           everything needed to rebuild the model (+ the base LLM's config hash)
    trainable.safetensors     only the trained weights (fp32 masters), of the best validation so far
    best.json                 step, selection metric and scores of that export
    checkpoints/<tag>/        DeepSpeed state: ZeRO shards of the trainable weights, optimizer, scheduler,
    checkpoints/latest        and our client state (step, best score, RNG states). The frozen LLM is not
                              written: it is the base model named in r2g_config.json.

Every file here is written so that a crash (kill -9, pre-emption, power loss) at any moment leaves the
previous version whole: a tag is written under a `partial-` name and renamed once complete and on disk, and
`latest`, trainable.safetensors and best.json are replaced by renaming a finished temporary file over them.
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
from r2g.errors import R2GError

KEEP_CHECKPOINTS = 2  # resumable checkpoints kept on disk; older ones are deleted after a successful save
PARTIAL = "partial-"  # prefix of a tag folder still being written; `latest` never names one


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a folder too: its entries (a rename) reach the disk only this way
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(tmp: Path, dest: Path) -> None:
    """Put the finished file `tmp` in place of `dest` in one step: a crash leaves the old file or the new one."""
    _fsync(tmp)
    os.replace(tmp, dest)
    _fsync(dest.parent)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _replace(tmp, path)


def save_resumable(engine, out: Path, step: int, client_state: dict, rank: int) -> None:
    """Write checkpoint `step<N>` (every rank calls this) without ever putting the previous one at risk."""
    from deepspeed import comm

    ckpt, tag = out / "checkpoints", f"step{step:08d}"
    partial = ckpt / (PARTIAL + tag)
    if rank == 0 and partial.exists():
        shutil.rmtree(partial)  # a crashed earlier try at this step: none of its files may end up in this one
    comm.barrier()
    # save_latest=False: DeepSpeed would write `latest` in place (a crash can leave it empty) and before the
    # other ranks have finished their shards. save_checkpoint ends in a barrier, so after it every rank is done.
    engine.save_checkpoint(str(ckpt), tag=partial.name, client_state={**client_state, "rng": rng_state()},
                           save_latest=False, exclude_frozen_parameters=True)
    if rank == 0:
        for f in partial.rglob("*"):
            if f.is_file():
                _fsync(f)
        final = ckpt / tag
        if final.exists():  # the same step saved before, by a run that died before `latest` named it
            shutil.rmtree(final)
        partial.rename(final)
        _fsync(ckpt)
        _write_text(ckpt / "latest", tag)
        tags = sorted(p for p in ckpt.glob("step*") if p.is_dir())
        for old in tags[:-KEEP_CHECKPOINTS] + list(ckpt.glob(PARTIAL + "*")):
            shutil.rmtree(old, ignore_errors=True)
    comm.barrier()  # every rank returns with the checkpoint committed


def resume(engine, out: Path) -> dict | None:
    """Load the latest checkpoint if there is one; returns its client state (None when starting fresh)."""
    ckpt = out / "checkpoints"
    if not (ckpt / "latest").is_file():
        return None
    tag = (ckpt / "latest").read_text().strip()
    if not tag or not (ckpt / tag).is_dir():  # only from a run saved before saves were atomic, or by hand
        complete = ", ".join(p.name for p in sorted(ckpt.glob("step*")) if p.is_dir()) or "none"
        raise R2GError(f"{ckpt / 'latest'} names {tag!r}, which is not a checkpoint in {ckpt}; write the name of "
                       f"a complete checkpoint into it (folders there: {complete}) or train into a new --out")
    # load_module_strict=False: the frozen LLM weights were left out of the checkpoint on purpose.
    path, client = engine.load_checkpoint(str(ckpt), tag=tag, load_module_strict=False)
    if path is None:
        return None
    set_rng_state(client["rng"])
    return client


def gather_trainable(engine) -> dict[str, torch.Tensor]:
    """Full fp32 master copies of the trainable weights (a collective under ZeRO-3: call on every rank)."""
    from deepspeed.utils import safe_get_full_fp32_param

    weights = {}
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        master = safe_get_full_fp32_param(p)
        if master is None:
            # ZeRO-0 without bf16 keeps no separate masters (DeepSpeed wraps no optimizer around the torch one,
            # so the helper finds nothing): the module's own fp32 weights are what the optimizer steps.
            if p.dtype != torch.float32:
                raise R2GError(f"DeepSpeed holds no fp32 master of {name} ({p.dtype}) under this --ds config; "
                               "use ZeRO stage 1, 2 or 3 (ds_configs/zero2.json)")
            master = p
        weights[name] = master.detach().cpu().float().contiguous()
    return weights


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
    _replace(tmp, out / "trainable.safetensors")
    _write_text(out / "best.json", json.dumps(info, indent=2) + "\n")
