"""A run folder → the trained model, ready to generate: the one way eval, generate and the benches load a run.

`open_run` checks everything a load needs without loading anything heavy (the config, the base LLM folder and
its config hash, the vision weights, the trained weights), so bad input fails in a second, before any model
loads; `load_run` then loads it, ready to decode: whole (`load_for_inference`: on CUDA when there is a GPU,
else on the CPU, in the run's training precision resolved there; r2g.precision's default "auto" is bf16 on
CUDA, fp32 on the CPU), with its LLM partitioned across the ranks (ZeRO-3, `load_partitioned_for_inference`), or
with its LLM's layers split across the ranks (tensor parallel, `load_tensor_parallel_for_inference`).

The base LLM comes from `r2g_config.json` (or `--llm`), checked against the config hash recorded at
training time; the trained weights come from `trainable.safetensors` (the best validation export) or, with
`checkpoint=`, straight from a DeepSpeed ZeRO checkpoint through DeepSpeed's own consolidation
(`get_fp32_state_dict_from_zero_checkpoint`, the function behind `zero_to_fp32.py`).

Runs record their base paths absolute (`RunConfig.with_absolute_paths`), so a run folder works from
any directory. A relative one (runs written before that) is looked up from the working directory, then from
the run folder and each folder above it; `--llm`, `--vision-weights` and `--shards` override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r2g.config import GenerateConfig, RunConfig, replace_given
from r2g.errors import R2GError
from r2g.precision import Precision, resolve_precision


@dataclass(frozen=True)
class RunFolder:
    """A checked run folder: its config with the base paths to use, and where its trained weights come from."""

    path: Path
    cfg: RunConfig
    checkpoint: str | None = None  # None: trainable.safetensors; "latest" or a tag: the DeepSpeed checkpoint


def locate(recorded: str, run: Path) -> str:
    """A base path recorded in a run's config, as found from here: an absolute one as it is; a relative one from
    the working directory, else from the run folder or the nearest folder above it that holds it (unchanged
    when none does, so that the error names what the config says)."""
    path = Path(recorded)
    if path.is_absolute() or path.exists():
        return recorded
    run = run.absolute()
    for folder in (run, *run.parents):
        if (folder / path).exists():
            return str(folder / path)
    return recorded


def _recorded(value: str, run: Path, field: str, flag: str) -> str:
    found = locate(value, run)
    if not Path(found).exists():
        raise R2GError(f"{run / 'r2g_config.json'}: {field} '{value}' not found from {Path.cwd()} nor above the run "
                       f"folder; pass {flag} with where it is now")
    return found


def open_run(
    run: str | Path,
    llm: str | None = None,
    vision_weights: str | None = None,
    shards: str | None = None,
    checkpoint: str | None = None,
    allow_llm_mismatch: bool = False,
) -> RunFolder:
    """The run folder checked for a load, base paths overridden by the arguments given (None = as recorded).

    Shards are only located, not checked: generating for new images does not read them."""
    from r2g.model.llm import config_hash

    run = Path(run)
    path = run / "r2g_config.json"
    if not path.is_file():
        raise R2GError(f"{path}: not found; --ckpt must be a run folder written by `r2g train` / cli/train.py")
    cfg, meta = RunConfig.load_record(path)
    llm = llm or _recorded(cfg.model.llm, run, "model.llm", "--llm")
    if vision_weights is not None and not Path(vision_weights).exists():
        raise R2GError(f"--vision-weights {vision_weights}: not found; give a local .safetensors/.pth/.bin file or folder")
    if vision_weights is None and cfg.model.vision_weights_file:  # else the run's Swin started from random weights
        vision_weights = _recorded(cfg.model.vision_weights_file, run, "model.vision_weights", "--vision-weights")
    recorded, actual = meta.get("llm_config_sha256"), config_hash(llm)
    if recorded and recorded != actual and not allow_llm_mismatch:
        raise R2GError(
            f"{llm}: its config.json differs from the base LLM this run was trained on (sha256 "
            f"{actual[:12]}… vs {recorded[:12]}…); pass the right --llm, or --allow-llm-mismatch to go ahead anyway"
        )
    _weights_file(run, checkpoint)
    cfg = replace_given(cfg, model=replace_given(cfg.model, llm=llm, vision_weights=vision_weights),
                        data=replace_given(cfg.data, shards=shards or locate(cfg.data.shards, run)))
    return RunFolder(run, cfg, checkpoint)


def _weights_file(run: Path, checkpoint: str | None) -> Path:
    """trainable.safetensors (`checkpoint` None) or the DeepSpeed checkpoint folder holding `checkpoint`, checked."""
    if checkpoint is None:
        path = run / "trainable.safetensors"
        if not path.is_file():
            raise R2GError(f"{path}: not found; the run exports it at its first validation (or its end); "
                           "or pass --checkpoint latest to read the DeepSpeed checkpoint")
        return path
    ckpt = run / "checkpoints"
    if checkpoint == "latest" and not (ckpt / "latest").is_file():
        raise R2GError(f"{ckpt}: no DeepSpeed checkpoint (no 'latest' file); evaluate trainable.safetensors instead")
    if checkpoint != "latest" and not (ckpt / checkpoint).is_dir():
        have = ", ".join(sorted(p.name for p in ckpt.glob("step*"))) or "none"
        raise R2GError(f"{ckpt / checkpoint}: no such checkpoint (have: {have})")
    return ckpt


def zero_checkpoint_weights(run: str | Path, tag: str = "latest") -> dict[str, torch.Tensor]:
    """fp32 trainable weights consolidated from the run's DeepSpeed checkpoint `tag` (a step tag or "latest")."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = _weights_file(Path(run), tag)
    # The frozen LLM was never written into the checkpoint, so only trainable weights come back. DeepSpeed reads
    # the 'latest' file itself when given no tag.
    sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=None if tag == "latest" else tag,
                                                  exclude_frozen_parameters=True)
    return {k: v.float() for k, v in sd.items()}


def trained_weights(folder: RunFolder) -> dict[str, torch.Tensor]:
    """The run's trained weights (fp32), from trainable.safetensors or its DeepSpeed checkpoint."""
    if folder.checkpoint is not None:
        return zero_checkpoint_weights(folder.path, folder.checkpoint)
    from safetensors.torch import load_file

    return load_file(str(_weights_file(folder.path, None)))


def inference_placement(precision: str = "auto", device: torch.device | None = None) -> tuple[torch.device, Precision]:
    """Where and in what precision a run decodes: `device` (None = CUDA when available, else CPU) and the run's
    `train.precision` resolved on it, so that a run decodes in the precision it trained in ("auto": bf16 on
    CUDA, fp32 on the CPU)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, resolve_precision(precision, device)


def load_for_inference(folder: RunFolder, device: torch.device | None = None):
    """(the run's model with its trained weights, in eval mode, placed by `inference_placement`; its Precision,
    whose `autocast` and `input_dtype` the caller generates with)."""
    from r2g.model.r2gen import build_model

    device, precision = inference_placement(folder.cfg.train.precision, device)
    model = build_model(folder.cfg.model, dtype=precision.llm_dtype)
    model.load_trainable_state_dict(trained_weights(folder))
    if precision.ds_bf16:  # trained with every weight in bf16, the LLM's rotary buffers fp32 (R2GenGPT.to_bf16)
        model.to_bf16()
    return model.to(device).eval(), precision


def partitioned_inference_config(folder: RunFolder, ds_path: str | Path) -> dict:
    """The ZeRO-3 config at `ds_path` (eval's and generate's --ds) for decoding `folder`'s run with its LLM
    partitioned; checked, with the run, before any model loads."""
    from r2g.ds_config import load_inference_ds_config

    ds = load_inference_ds_config(ds_path)
    if folder.cfg.train.precision == "bf16-mixed":
        # ZeRO-3 holds every parameter in one dtype: the fp32 trainables beside the bf16 LLM cannot be kept.
        raise R2GError(f"{folder.path} trained in bf16-mixed (LLM bf16, trainables fp32), which ZeRO-3 cannot "
                       "hold; run it without --ds (each rank then holds the whole model)")
    return ds


def load_partitioned_for_inference(folder: RunFolder, ds: dict, world: int, batch_size: int,
                                   device: torch.device | None = None):
    """`load_for_inference` for an LLM one device cannot hold: (a DeepSpeed ZeRO-3 engine whose `.module` is the
    model, its Precision). The LLM loads partitioned, each of the `world` ranks reading only its share of the
    checkpoint (r2g/model/zero3_load.py); the engine gathers each layer for its forward pass, so every rank must
    run every forward pass (decode's `synced`). Keep the engine alive while generating: its hooks do the
    gathering. `ds` comes from `partitioned_inference_config`."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from r2g.ds_config import fill_inference_ds_config
    from r2g.model.r2gen import build_model

    device, precision = inference_placement(folder.cfg.train.precision, device)
    ds = fill_inference_ds_config(ds, batch_size, world, precision.ds_bf16)
    hf_ds = HfDeepSpeedConfig(ds)  # noqa: F841  (alive while the model builds, so the LLM loads partitioned)
    model = build_model(folder.cfg.model, dtype=precision.llm_dtype)
    model.load_trainable_state_dict(trained_weights(folder))  # whole still: deepspeed.initialize partitions them
    if precision.ds_bf16:  # as load_for_inference: the engine would leave Swin and the trainables fp32
        model.to_bf16()
    engine = deepspeed.initialize(model=model.eval(), config=ds)[0]
    return engine, precision


def tensor_parallel_inference_check(folder: RunFolder, tp: int, ds: str | None = None) -> int:
    """eval's and generate's --tp, checked with the run before any model loads: the number of ranks the LLM's
    layers are split over (1: not split). The launch must have exactly `tp` processes (no data-parallel groups
    beside the split: every rank decodes every study), which cannot mix with ZeRO-3 (--ds)."""
    from r2g.dist import free_port
    from r2g.launch import detect_launch
    from r2g.model.tp_load import check_tensor_parallel

    if tp < 1:
        raise R2GError(f"--tp {tp}: give the number of processes to split the LLM over (1 = not split)")
    if tp == 1:
        return tp
    if ds:
        raise R2GError(f"--tp {tp} with --ds {ds}: choose one way to split the LLM (tensor-parallel slices or "
                       "ZeRO-3 partitions)")
    if folder.cfg.model.llm_lora:
        raise R2GError(f"--tp {tp}: {folder.path} trained LoRA inside the LLM (--llm-lora), which AutoTP cannot "
                       "split; decode it whole or with --ds ds_configs/zero3.json")
    check_tensor_parallel(folder.cfg.model.llm, tp, detect_launch(os.environ, free_port).world)
    return tp


def load_tensor_parallel_for_inference(folder: RunFolder, tp: int, device: torch.device | None = None):
    """`load_for_inference` with the LLM's layers split over the `tp` ranks of the launch by DeepSpeed AutoTP
    (r2g/model/tp_load.py), each rank reading only its slices; Swin and the mapper are whole on every rank.
    Every rank must run every forward pass on the same inputs (decode's `synced`)."""
    from r2g.model.llm import load_llm
    from r2g.model.r2gen import build_model

    device, precision = inference_placement(folder.cfg.train.precision, device)
    llm, tokenizer = load_llm(folder.cfg.model.llm, precision.llm_dtype, tensor_parallel=tp)
    model = build_model(folder.cfg.model, llm, tokenizer)
    model.load_trainable_state_dict(trained_weights(folder))
    if precision.ds_bf16:
        model.to_bf16()
    return model.to(device).eval(), precision


@dataclass(frozen=True)
class LoadedRun:
    """A run loaded for decoding (`load_run`): what `r2g eval`, `r2g generate` and a server decode with."""

    folder: RunFolder
    model: Any  # r2g.model.r2gen.R2GenGPT in eval mode, trained weights in; `.generate(images, view_mask, gen)`
    precision: Precision  # decode under `precision.autocast(device)`, images in `precision.input_dtype`
    generate: GenerateConfig  # the run's generation settings, overrides applied
    device: torch.device
    rank: int = 0
    world: int = 1
    # ZeRO-3 only: the DeepSpeed engine whose hooks gather each partitioned layer for its forward pass. Held
    # here so it lives as long as this object: keep the LoadedRun, not only its model, while decoding.
    engine: Any = None
    tp: int = 1  # ranks the LLM's layers are split over (tensor parallel); 1: not split

    @property
    def cfg(self) -> RunConfig:
        return self.folder.cfg

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def synced(self) -> bool:
        """The LLM is partitioned over several ranks: every rank must run every forward pass, on its own studies
        or the same ones, until all ranks are done (HF generate's `synced_gpus`)."""
        return (self.engine is not None or self.tp > 1) and self.world > 1

    @property
    def data_ranks(self) -> tuple[int, int]:
        """(this rank's index, number of ranks) among the ranks that split a split's studies: tensor-parallel
        ranks compute one forward pass together, so each of them decodes every study."""
        return (0, 1) if self.tp > 1 else (self.rank, self.world)

    def llm_weights_held(self) -> tuple[int, int]:
        """(LLM weights this rank holds, weights in the LLM)."""
        from r2g.model.tp_load import llm_elements_split
        from r2g.model.zero3_load import llm_elements_held

        return llm_elements_split(self.model.llm) if self.tp > 1 else llm_elements_held(self.model.llm)


def load_run(folder: RunFolder, ds: dict | None = None, generate: dict[str, Any] | None = None,
             distributed: bool = False, tp: int = 1) -> LoadedRun:
    """`folder`'s run (from `open_run`) ready to decode: the one inference loading sequence.

    ds: a ZeRO-3 config from `partitioned_inference_config`: the LLM partitioned across the ranks of the launch
    (deepspeed / torchrun; a world of one under plain python). distributed: join the launcher's process group
    with the whole model on every rank (r2g eval splits a split across them). Neither: this process alone.
    tp: the LLM's layers split over the tp ranks of the launch (from `tensor_parallel_inference_check`).
    generate: GenerateConfig fields over the run's own (None values ignored)."""
    rank, world, device = 0, 1, None
    if ds is not None or distributed or tp > 1:  # ZeRO-3 needs a process group, even a world of one
        from r2g.dist import init_distributed

        rank, world, device = init_distributed()
    gen = replace_given(folder.cfg.generate, **(generate or {}))
    engine = None
    if ds is not None:
        engine, precision = load_partitioned_for_inference(folder, ds, world, gen.batch_size, device)
        model = engine.module
    elif tp > 1:
        model, precision = load_tensor_parallel_for_inference(folder, tp, device)
    else:
        model, precision = load_for_inference(folder, device)
    return LoadedRun(folder, model, precision, gen, next(model.parameters()).device, rank, world, engine, tp)
