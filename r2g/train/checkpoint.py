"""Resumable DeepSpeed checkpoints and the exported run artefacts.

A run folder holds:
    r2g_config.json           the run record: everything needed to rebuild the model (+ the base LLM's config
                              hash, and the settings a resume changed), written by RunConfig.save
    trainable.safetensors     only the trained weights (fp32 masters), of the best validation so far; its
                              metadata holds that validation's record (step, selection metric, scores)
    best.json                 a readable copy of that record
    checkpoints/<tag>/        r2g_state.pt: the training state whole, free of the process count that wrote it
    checkpoints/latest        (fp32 masters and Adam moments by weight name, the optimizer's step and lr, the
                              scheduler, DeepSpeed's counters, our client state: r2g/train/world_state.py),
                              which `--resume` loads on any count; each rank's RNG states (rng_rank<N>.pt);
                              and DeepSpeed's own files (ZeRO shards of the same weights and optimizer, for
                              DeepSpeed's tools: zero_to_fp32.py, `r2g eval --ckpt`). The frozen LLM is not
                              written: it is the base model named in r2g_config.json.

Every file here is written so that a crash (kill -9, pre-emption, power loss) at any moment leaves the
previous version whole: a tag is written under a `partial-` name and renamed once complete and on disk, and
`latest` and trainable.safetensors are replaced by renaming a finished temporary file over them. The export
and its record are one file, so they change together: a resume takes the best score so far from the export
(`exported_best`), not from the checkpoint, which may predate a better export.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from r2g.config import SECTIONS, RunConfig, flag_name
from r2g.dist import fail_together
from r2g.errors import R2GError
from r2g.files import fsync, replace, write_text
from r2g.train.world_state import WORLD_STATE, gather_world_state, load_world_state

RECORD = "r2g_config.json"
KEEP_CHECKPOINTS = 2  # resumable checkpoints kept on disk; older ones are deleted after a successful save
PARTIAL = "partial-"  # prefix of a tag folder still being written; `latest` never names one
EXPORT = "trainable.safetensors"
BEST_KEY = "r2g_best"  # the export's metadata entry holding its validation record (JSON)


def rng_state() -> dict:
    """This process's generators: Python, NumPy, torch's CPU one and, with CUDA, every visible GPU's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`'s generators. CUDA's are restored when both the saved state and this process have
    them (a state saved on a CPU leaves them as seeded); with another count of visible GPUs than at the save,
    only the current device's."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is None or not torch.cuda.is_available():
        return
    if len(saved) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved)
    elif torch.cuda.current_device() < len(saved):
        torch.cuda.set_rng_state(saved[torch.cuda.current_device()])


def _rng_file(tag_folder: Path, rank: int) -> Path:
    return tag_folder / f"rng_rank{rank:05d}.pt"


def save_resumable(engine, out: Path, step: int, client_state: dict, rank: int, world: int) -> None:
    """Write checkpoint `step<N>` (every rank calls this) without ever putting the previous one at risk."""
    from deepspeed import comm

    state = gather_world_state(engine, gather_trainable(engine), client_state, world)  # collectives: every rank
    ckpt, tag = out / "checkpoints", f"step{step:08d}"
    partial = ckpt / (PARTIAL + tag)
    if rank == 0 and partial.exists():
        shutil.rmtree(partial)  # a crashed earlier try at this step: none of its files may end up in this one
    comm.barrier()
    # Each rank's own generators (DeepSpeed's client state is written by one rank only): dropout masks after a
    # resume are those the uninterrupted run would have drawn, on every rank and GPU.
    partial.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), _rng_file(partial, rank))
    if rank == 0:
        torch.save(state, partial / WORLD_STATE)
    # save_latest=False: DeepSpeed would write `latest` in place (a crash can leave it empty) and before the
    # other ranks have finished their shards. save_checkpoint ends in a barrier, so after it every rank is done.
    engine.save_checkpoint(str(ckpt), tag=partial.name, client_state=client_state, save_latest=False,
                           exclude_frozen_parameters=True)
    with fail_together():  # also the barrier: every rank returns with the checkpoint committed, or stops
        if rank == 0:
            try:
                _commit(ckpt, partial, tag)
            except OSError as e:
                raise R2GError(f"{ckpt}: could not commit checkpoint {tag} ({e}); the previous one is intact: "
                               "free space there and --resume") from None


def _commit(ckpt: Path, partial: Path, tag: str) -> None:
    for f in partial.rglob("*"):
        if f.is_file():
            fsync(f)
    final = ckpt / tag
    if final.exists():  # the same step saved before, by a run that died before `latest` named it
        shutil.rmtree(final)
    partial.rename(final)
    fsync(ckpt)
    write_text(ckpt / "latest", tag)
    tags = sorted(p for p in ckpt.glob("step*") if p.is_dir())
    for old in tags[:-KEEP_CHECKPOINTS] + list(ckpt.glob(PARTIAL + "*")):
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out: Path) -> str | None:
    """The tag `checkpoints/latest` names (None: the run has no checkpoint yet), checked to be a checkpoint."""
    ckpt = out / "checkpoints"
    if not (ckpt / "latest").is_file():
        return None
    tag = (ckpt / "latest").read_text().strip()
    if not tag or not (ckpt / tag).is_dir():  # only from a run saved before saves were atomic, or by hand
        complete = ", ".join(p.name for p in sorted(ckpt.glob("step*")) if p.is_dir()) or "none"
        raise R2GError(f"{ckpt / 'latest'} names {tag!r}, which is not a checkpoint in {ckpt}; write the name of "
                       f"a complete checkpoint into it (folders there: {complete}) or train into a new --out")
    return tag


def resume(engine, out: Path, rank: int, world: int, seed: int) -> dict:
    """Load the latest checkpoint (`latest_checkpoint` names one) into `engine`, written by this or any other
    number of processes, and this rank's generators; returns r2g's client state.

    On the process count that saved it, each rank restores its own RNG states, so dropout goes on as in the
    uninterrupted run. On another count there is no such run to follow: its ranks drew their masks for other
    samples in other batches, so each rank is reseeded from (seed, step, rank) instead, reproducibly."""
    tag = latest_checkpoint(out)
    folder = out / "checkpoints" / tag
    if not (folder / WORLD_STATE).is_file():
        raise R2GError(f"{folder} holds no {WORLD_STATE} (it was written by an r2g older than resumes on any "
                       "process count, or it is damaged); write the name of another complete checkpoint into "
                       "checkpoints/latest or train into a new --out")
    # Our own file. Mapped, not read: each rank copies only its slices out of it (1.1 GB in deep mode at 7B).
    state = torch.load(folder / WORLD_STATE, map_location="cpu", weights_only=False, mmap=True)
    load_world_state(engine, state)
    if state["world"] != world:
        reseed(seed, state["client"]["global_step"], rank)
        return state["client"]
    rng = _rng_file(folder, rank)
    if not rng.is_file():
        raise R2GError(f"{folder} holds no RNG state for rank {rank} ({rng.name}); write the name of another "
                       "complete checkpoint into checkpoints/latest or train into a new --out")
    set_rng_state(torch.load(rng, weights_only=False))  # our own file: NumPy's state is not a plain tensor
    return state["client"]


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed this process's generators (Python, NumPy, torch and every GPU's) from (seed, step, rank)."""
    value = random.Random(f"{seed}/{step}/{rank}").getrandbits(32)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # CUDA's generators too


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


def export_trainable(weights: dict[str, torch.Tensor], out: Path, info: dict) -> None:
    """trainable.safetensors with its validation record `info` inside (one rename replaces both), then best.json.
    A crash between the two leaves best.json a step behind; `exported_best` reads the record that counts."""
    tmp = out / (EXPORT + ".tmp")
    save_file(weights, str(tmp), metadata={"format": "pt", BEST_KEY: json.dumps(info)})
    replace(tmp, out / EXPORT)
    write_text(out / "best.json", json.dumps(info, indent=2) + "\n")


def exported_best(out: Path, repair_copy: bool = False) -> dict | None:
    """The validation record of the run's export (None: nothing exported yet), read from the export itself.
    `repair_copy` (one rank): rewrite best.json from it when a crash left that copy behind."""
    path = out / EXPORT
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        record = (f.metadata() or {}).get(BEST_KEY)
    copy = out / "best.json"
    if record is None:  # exported before the record moved inside the export
        return json.loads(copy.read_text()) if copy.is_file() else None
    best = json.loads(record)
    if repair_copy and (not copy.is_file() or json.loads(copy.read_text()) != best):
        write_text(copy, json.dumps(best, indent=2) + "\n")
    return best


# What a resume may change: how long the run goes on, how often it logs, saves and validates, how many loader
# workers read; and the process count with the split of the global batch into micro-batches and accumulation, as
# long as the global batch itself stays (`_check_global_batch`). Every other setting shapes the model, the data or
# the optimisation that the checkpoint continues, or what the best export's score means (validation subset,
# metric, decoding), so a change to it is refused.
RESUMABLE = ("train.max_steps", "train.epochs", "train.log_every", "train.save_every", "train.val_every",
             "train.val_per_epoch", "data.workers", "generate.batch_size")
BATCH_SPLIT = ("train.micro_batch", "train.grad_accum", "train.global_batch")
NOT_COMPARED = ("train.resume", "train.out")  # the launch's own: --resume itself, and where the record was found


def _flag(key: str) -> str:
    section, name = key.split(".")
    field = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    return f"--{flag_name(field)}" if field.metadata.get("cli", True) else key


def resumed_changes(out: Path, cfg: RunConfig, llm_config_sha256: str, world: int) -> dict[str, list]:
    """The settings in which this launch (`cfg`, base paths absolute, on `world` processes) differs from the run
    record in `out`: 'section.field' (or 'processes') -> [recorded, now], all of them allowed; a changed global
    batch, or any other difference, is refused, each named."""
    saved, meta = RunConfig.load_record(out / RECORD)
    saved_world = meta.get("world", world)  # records from before the count was kept: resumed on their own count
    _check_global_batch(out, saved, saved_world, cfg, world)
    changed = {k: v for k, v in saved.differences(cfg).items() if k not in NOT_COMPARED}
    refused = [f"{_flag(k)} was {old!r}, now {new!r}" for k, (old, new) in changed.items()
               if k not in RESUMABLE + BATCH_SPLIT]
    if meta.get("llm_config_sha256", llm_config_sha256) != llm_config_sha256:
        refused.append(f"the base LLM's config.json ({cfg.model.llm}) is not the one the run started from")
    if refused:
        raise R2GError(f"{out / RECORD}: --resume continues the run as it was set up, but this launch changes "
                       f"{'; '.join(refused)}. Resume with the recorded settings, or train into a new --out "
                       f"(a resume may change only {', '.join(map(_flag, RESUMABLE))}, and the process count "
                       "with --global-batch)")
    if saved_world != world:
        changed["processes"] = (saved_world, world)
    return {k: list(v) for k, v in changed.items()}


def _check_global_batch(out: Path, saved: RunConfig, saved_world: int, cfg: RunConfig, world: int) -> None:
    """The global batch sets the steps per epoch (so the epoch and lr schedule of every step) and what one step
    averages; a resume keeps it. Without --global-batch it is processes × --micro-batch × --grad-accum, so a
    resume on another count changes it unless --global-batch names the old value."""
    before = saved_world * saved.train.micro_batch * saved.train.grad_accum
    now = world * cfg.train.micro_batch * cfg.train.grad_accum
    if before == now:
        return
    raise R2GError(
        f"{out / RECORD}: the run's global batch is {before} studies per step ({saved_world} process(es) × "
        f"--micro-batch {saved.train.micro_batch} × --grad-accum {saved.train.grad_accum}), this launch's {now} "
        f"({world} × {cfg.train.micro_batch} × {cfg.train.grad_accum}); a resume keeps the global batch, which "
        f"sets the steps per epoch and the lr schedule. Pass --global-batch {before} (r2g splits it over any "
        f"process count that divides it, as the recipes do)"
    )


def record_resume(out: Path, cfg: RunConfig, changes: dict[str, list], step: int, world: int) -> None:
    """Write this launch's settings and process count into the run record, with the changes it made and the step
    they took effect at (meta.changes), so the record says what every stretch of the run used."""
    _, meta = RunConfig.load_record(out / RECORD)
    cfg.save(out / RECORD, {**meta, "world": world,
                            "changes": [*meta.get("changes", []), {"step": step, "settings": changes}]})
