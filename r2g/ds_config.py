"""Load a DeepSpeed JSON config and fill its "auto" values from the r2g config (training), or make a ZeRO-3
config fit for decoding with the model partitioned (`r2g eval` / `r2g generate --ds`).

A concrete value in the JSON that contradicts the CLI is an error naming both, so a run never trains with
a batch size or learning rate other than the one its r2g_config.json records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r2g.config import RunConfig
from r2g.errors import R2GError

# The configs shipped inside the package (an installed wheel has them too; the checkout's top-level
# ds_configs/ is a link here). `--ds zero2.json` or `ds_configs/zero2.json` falls back here when not found as given.
SHIPPED = Path(__file__).resolve().parent / "ds_configs"


def _fill(section: dict, key: str, value: Any, where: str, flag: str, conflicts: list[str]) -> None:
    current = section.get(key, "auto")
    if current == "auto":
        section[key] = value
    elif current != value:
        conflicts.append(f"{where} is {current!r} but {flag} gives {value!r}")


def find_ds_config(path: str | Path) -> Path:
    """`path` as given, or, when that is a missing `<name>` or `ds_configs/<name>`, the shipped file of that name."""
    path = Path(path)
    if not path.is_file() and path.parts[:-1] in ((), ("ds_configs",)) and (SHIPPED / path.name).is_file():
        return SHIPPED / path.name
    return path


def load_ds_config(path: str | Path) -> dict:
    path = find_ds_config(path)
    if not path.is_file():
        raise R2GError(f"{path}: DeepSpeed config not found (pass --ds ds_configs/zero2.json, zero3.json or "
                       "zero3_offload.json, or a path to one)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise R2GError(f"{path}: not valid JSON ({e})") from None


def resolve_ds_config(path: str | Path, cfg: RunConfig, world: int, total_steps: int, bf16: bool) -> dict:
    return fill_ds_config(load_ds_config(path), path, cfg, world, total_steps, bf16)


def fill_ds_config(ds: dict, path: str | Path, cfg: RunConfig, world: int, total_steps: int, bf16: bool) -> dict:
    """`ds` (read from `path`) with its "auto" values filled in from `cfg`; a contradicting value is an error."""
    t, conflicts = cfg.train, []
    _fill(ds, "train_micro_batch_size_per_gpu", t.micro_batch, "train_micro_batch_size_per_gpu", "--micro-batch", conflicts)
    _fill(ds, "gradient_accumulation_steps", t.grad_accum, "gradient_accumulation_steps", "--grad-accum", conflicts)
    _fill(ds, "gradient_clipping", t.grad_clip, "gradient_clipping", "--grad-clip", conflicts)
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = t.micro_batch * t.grad_accum * world
    elif ds["train_batch_size"] != t.micro_batch * t.grad_accum * world:
        conflicts.append(
            f"train_batch_size is {ds['train_batch_size']} but micro-batch × grad-accum × world = "
            f"{t.micro_batch} × {t.grad_accum} × {world}"
        )
    if "optimizer" in ds:
        params = ds["optimizer"].setdefault("params", {})
        _fill(params, "lr", t.lr, "optimizer.params.lr", "--lr", conflicts)
        _fill(params, "weight_decay", t.weight_decay, "optimizer.params.weight_decay", "--weight-decay", conflicts)
    if cfg.train.lr_schedule == "epoch_cosine":
        ds.pop("scheduler", None)  # the training loop passes its own per-epoch schedule (r2g.train.schedule)
    if "scheduler" in ds:
        params = ds["scheduler"].setdefault("params", {})
        _fill(params, "total_num_steps", total_steps, "scheduler.params.total_num_steps", "--epochs/--max-steps", conflicts)
        # DeepSpeed's WarmupCosineLR rejects 0 warmup steps; one step at the floor lr is the nearest to none.
        warmup = max(1, min(t.warmup_steps, total_steps - 1))
        _fill(params, "warmup_num_steps", warmup, "scheduler.params.warmup_num_steps", "--warmup-steps", conflicts)
        if "warmup_max_lr" in params:
            _fill(params, "warmup_max_lr", t.lr, "scheduler.params.warmup_max_lr", "--lr", conflicts)
    bf16_section = ds.setdefault("bf16", {})
    _fill(bf16_section, "enabled", bf16, "bf16.enabled", "--precision", conflicts)
    if ds.get("fp16", {}).get("enabled") is True and bf16:
        conflicts.append("fp16.enabled is true but --precision resolves to bf16")
    _check_buffer_dtype(ds, path)
    if conflicts:
        raise R2GError(f"{path} conflicts with the command line: " + "; ".join(conflicts) + '. Set those keys to "auto" or change the flags.')
    return ds


def _check_buffer_dtype(ds: dict, path: str | Path) -> None:
    """data_types.buffer_dtype makes DeepSpeed cast every floating buffer, the LLM's rotary frequencies too, which
    must stay fp32 (R2GenGPT.to_bf16 casts the buffers that need bf16 itself)."""
    if ds.get("data_types", {}).get("buffer_dtype") is not None:
        raise R2GError(f"{find_ds_config(path)}: data_types.buffer_dtype would cast every buffer, the LLM's fp32 "
                       "rotary frequencies included (r2g casts Swin's buffers itself); remove it")


def load_inference_ds_config(path: str | Path) -> dict:
    """The ZeRO-3 config at `path`, for decoding with the model partitioned across ranks. Only ZeRO-3
    partitions weights (stages 1 and 2 partition optimizer state, which inference has none of), so any other
    stage is an error."""
    ds = load_ds_config(path)
    if zero_stage(ds) != 3:
        raise R2GError(f"{find_ds_config(path)}: --ds partitions the model for eval and generate, which needs ZeRO-3 "
                       f"(zero_optimization.stage 3, as in ds_configs/zero3.json); this config has stage "
                       f"{zero_stage(ds)}. Without --ds every rank holds the whole model.")
    _check_buffer_dtype(ds, path)
    return ds


def fill_inference_ds_config(ds: dict, micro_batch: int, world: int, bf16: bool) -> dict:
    """`ds` (from load_inference_ds_config) ready for `deepspeed.initialize` without an optimizer: the training
    keys dropped, the batch keys filled (DeepSpeed checks them even when nothing trains). Without DeepSpeed's
    memory-efficient linear, which replaces torch's F.linear process-wide by matmul + bias add so that autograd
    keeps no gathered weight: decoding has no autograd, and with torch's own F.linear the partitioned model
    computes exactly what the whole one does (in bf16 the two round differently)."""
    ds = {k: v for k, v in ds.items() if k not in ("optimizer", "scheduler", "gradient_clipping")}
    ds.update(train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=1,
              train_batch_size=micro_batch * world, bf16={"enabled": bf16},
              zero_optimization={**ds.get("zero_optimization", {}), "memory_efficient_linear": False})
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
