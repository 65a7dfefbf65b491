"""The training recipe: setup → train (forward, engine.backward, engine.step) → validate/save → cleanup.

Runs unchanged under `deepspeed`, `torchrun` and plain `python`, on GPUs (bf16, NCCL) and on CPU (fp32,
gloo). Under ZeRO-3 the frozen LLM is partitioned across ranks while it loads (built under
`deepspeed.zero.Init`, each rank reading only its share of the weights: r2g/model/zero3_load.py), so no
rank ever holds all of it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from r2g.config import RunConfig
from r2g.data.loader import LostSamples, make_loader, split_shards
from r2g.dist import fail_together, gather_objects, init_distributed
from r2g.ds_config import fill_ds_config, load_ds_config, zero_stage
from r2g.errors import AgreedError, R2GError
from r2g.model.llm import config_hash
from r2g.model.zero3_load import llm_elements_held
from r2g.precision import Precision, resolve_precision
from r2g.train.checkpoint import (RECORD, export_trainable, exported_best, gather_trainable, latest_checkpoint,
                                  record_resume, resume, resumed_changes, save_resumable)
from r2g.train.logger import RunLogger
from r2g.train.validate import check_select_metric, selection_value, validate


def micro_batches(loader, pipeline, steps_per_epoch: int, accum: int, start_step: int):
    """Yield (epoch, micro-batch) forever, `steps_per_epoch * accum` micro-batches per epoch on every rank.

    Every rank must take the same number of steps. The loader gives ranks equal shares to within the worker
    count; a rank that runs out early re-reads its own stream, and the few samples beyond the last full
    step of an epoch wait for the next epoch's shuffle (as drop_last does). Resuming skips the micro-batches
    already trained in the current epoch; the shuffle is seeded by epoch, so the skipped ones are the same.
    """
    per_epoch = steps_per_epoch * accum
    epoch, skip = divmod(start_step, steps_per_epoch)
    skip *= accum
    while True:
        pipeline.set_epoch(epoch)
        served = 0
        while served < per_epoch:
            read = 0
            for batch in loader:
                read += 1
                if skip:
                    skip -= 1
                else:
                    yield epoch, batch
                served += 1
                if served == per_epoch:
                    break
            if read == 0:
                raise R2GError("a rank's share of the train split is empty (fewer train shards or studies than "
                               "ranks × workers); use fewer processes or fewer --workers")
        epoch += 1


def model_inputs(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """The model's forward arguments on `device`, from a batch of a loader given the model's `report_encoder`
    (its workers have already built the text tensors). The masks stay on the CPU, where the model checks and
    indexes them without waiting on the device."""
    masks = {"view_mask": batch["view_mask"], "image_positions": batch["text"]["image_positions"]}
    return {
        "images": batch["images"].to(device, dtype, non_blocking=True),
        **{k: v.to(device, non_blocking=True) for k, v in batch["text"].items() if k not in masks},
        **masks,
    }


def validation_steps(steps_per_epoch: int, val_every: int, val_per_epoch: int) -> callable:
    """step -> whether to validate after it: every `val_every` steps, or `val_per_epoch` times an epoch at
    evenly spaced steps (the reference's val_check_interval 0.5 is val_per_epoch 2)."""
    if val_every:
        return lambda step: step % val_every == 0
    marks = {round(k * steps_per_epoch / val_per_epoch) % steps_per_epoch for k in range(1, val_per_epoch + 1)}
    return lambda step: step % steps_per_epoch in marks


def val_study_count(val_samples: int, val_fraction: float, n_val: int) -> int:
    """Val studies decoded per validation: --val-samples, or --val-fraction of the split when it is 0."""
    return val_samples if val_samples > 0 else math.ceil(val_fraction * n_val)


def check_vision_weights(cfg: RunConfig) -> None:
    if cfg.model.vision_weights is None:
        raise R2GError("no --vision-weights: training would start from a randomly initialised Swin, which is not the "
                       "paper's method; pass --vision-weights PATH (a local timm or HF Swin checkpoint), or "
                       "--vision-weights none to train from random weights on purpose")


def validate_and_export(engine, val_loader, cfg: RunConfig, precision: Precision, step: int, n_val: int, best,
                        log: RunLogger, dist: tuple) -> dict | None:
    """Validate (when there is a val loader), export the weights if they are the best so far; returns the new
    best. Without validation the latest weights are the export."""
    rank, world, device, synced = dist
    scores, value, improved = {}, None, True
    if val_loader is not None:
        with precision.autocast(device):  # decode in the precision the run trains in
            scores, _ = validate(engine.module, val_loader, cfg, device, precision.input_dtype, n_val, rank, world, synced)
        value = selection_value(scores, cfg.train.select_metric)
        log.log(step, {f"val/{k}": v for k, v in scores.items()} | {"val/select": value})
        log.print(f"step {step}: val {cfg.train.select_metric} = {value:.4f} " + " ".join(f"{k}={v:.3f}" for k, v in scores.items()))
        improved = best is None or value > best["value"]
    weights = gather_trainable(engine)  # collective under ZeRO-3: every rank takes part
    if not improved:
        return best
    best = {"step": step, "metric": cfg.train.select_metric, "value": value, "scores": scores}
    with fail_together():  # the other ranks go on to the next collective only if rank 0's export was written
        if rank == 0:
            export_trainable(weights, out=Path(cfg.train.out), info=best)
    return best


def build_engine(cfg: RunConfig, ds: dict, precision: Precision, scheduler_factory=None):
    """(the DeepSpeed engine training `cfg.model` under the filled config `ds`, its lr scheduler or None). Under
    ZeRO-3 the LLM loads partitioned (the HfDeepSpeedConfig is alive across build_model). Precision "bf16" casts
    the weights here (R2GenGPT.to_bf16) rather than through DeepSpeed, so that the LLM's rotary buffers stay
    fp32 and the trainables are bf16 under ZeRO-3 too."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from r2g.model.r2gen import build_model

    hf_ds = HfDeepSpeedConfig(ds) if zero_stage(ds) == 3 else None  # noqa: F841
    model = build_model(cfg.model, dtype=precision.llm_dtype)
    if precision.ds_bf16:
        model.to_bf16()
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=model.trainable_parameters(),
                                                   config=ds, lr_scheduler=scheduler_factory)
    return engine, scheduler


def run(cfg: RunConfig) -> dict:
    """Train; returns {"steps", "best", "final_loss"}. Resumes from `cfg.train.out` when `cfg.train.resume`."""
    from transformers import set_seed

    from r2g.model.flops import FlopCounts, peak_flops
    from r2g.train.meter import ThroughputMeter
    from r2g.train.schedule import epoch_cosine

    t = cfg.train
    check_select_metric(t.select_metric)
    check_vision_weights(cfg)
    rank, world, device = init_distributed()
    # Seed before anything draws: mapper and LoRA initialisation, then dropout. Same seed on every rank,
    # so every rank builds identical initial weights. A resumed run then restores each rank's generators (CUDA's
    # included) as its checkpoint saved them, after the model is built (`resume` below), so the seed set here
    # does not clobber them and dropout goes on as in the uninterrupted run.
    set_seed(t.seed)
    out = Path(t.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    resuming = latest_checkpoint(out) is not None
    if resuming and not t.resume:
        raise R2GError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    # The run record: checked against this launch on a resume before anything loads (every rank reads the same
    # record, so all refuse together), written once the step it takes effect at is known.
    record, llm_hash = cfg.with_absolute_paths(), config_hash(cfg.model.llm)
    changes = resumed_changes(out, record, llm_hash, world) if resuming else {}

    # Data first: a missing split should fail before minutes of model loading.
    train_split = split_shards(cfg.data.shards, "train", cfg.data.skip_damaged_shards)
    n_train, lost = train_split.samples, LostSamples(train_split)
    n_val, val_split = 0, None
    if t.val_samples >= 0:
        try:
            val_split = split_shards(cfg.data.shards, "val", cfg.data.skip_damaged_shards)
        except R2GError as e:
            raise R2GError(f"{e}. Or pass --val-samples -1 to train without validation.") from None
        n_val = val_study_count(t.val_samples, t.val_fraction, val_split.samples)
    steps_per_epoch = max(1, n_train // (world * t.micro_batch * t.grad_accum))
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    ds = load_ds_config(t.ds_config)
    stage = zero_stage(ds)  # the precision depends on it (bf16-mixed needs ZeRO-0/1/2)
    precision = resolve_precision(t.precision, device, stage)
    ds = fill_ds_config(ds, t.ds_config, cfg, world, total_steps, precision.ds_bf16)

    scheduler_factory = None
    if t.lr_schedule == "epoch_cosine":
        scheduler_factory = lambda opt: epoch_cosine(opt, t.lr, t.min_lr, steps_per_epoch, t.epochs)  # noqa: E731
    engine, scheduler = build_engine(cfg, ds, precision, scheduler_factory)
    model, table = engine.module, engine.module.param_table()

    start_step, best = 0, None
    if resuming:
        client = resume(engine, out, rank, world, t.seed)
        if client["steps_per_epoch"] != steps_per_epoch:  # the global batch is checked above: the shards changed
            raise R2GError(
                f"{out}: the checkpoint has {client['steps_per_epoch']} steps per epoch, this launch "
                f"{steps_per_epoch}; resume with the shards the run was trained on"
            )
        # The best score so far is the export's: a better validation may have been exported after the checkpoint.
        start_step, best = client["global_step"], exported_best(out, repair_copy=rank == 0)
    if rank == 0 and not resuming:
        record.save(out / RECORD, {"llm_config_sha256": llm_hash, "world": world})
    elif rank == 0 and changes:
        record_resume(out, record, changes, start_step, world)
    log = RunLogger(out, total_steps, start_step, enabled=rank == 0)
    log.print(f"rank 0 of {world} on {device}, ZeRO-{stage}, {precision.name}; "
              f"{n_train} train studies, {steps_per_epoch} steps/epoch, {total_steps} steps" +
              (f"; resumed at step {start_step}" if start_step else ""))
    log.param_table(table)
    held, total = llm_elements_held(engine.module.llm)
    log.print(f"frozen LLM: this rank holds {held:,} of {total:,} weights ({held / max(total, 1):.0%})")
    log.log(start_step, {"llm_weights_held": held, "llm_weights_total": total})
    for note in lost.notes:
        log.print(f"[yellow]warning:[/] {note}")

    # Tokenizing in the loader workers keeps it off the step. Forked workers would otherwise make HF's
    # tokenizers warn that their thread pool was used before the fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train_loader, train_pipe = make_loader(train_split, cfg.data, batch_size=t.micro_batch, train=True, seed=t.seed,
                                           rank=rank, world=world,
                                           encode_reports=model.report_encoder(cfg.data.max_views))
    val_loader = None
    if val_split is not None:
        val_loader, _ = make_loader(val_split, cfg.data, batch_size=cfg.generate.batch_size, train=False, seed=t.seed,
                                    rank=rank, world=world)
    stream = micro_batches(train_loader, train_pipe, steps_per_epoch, t.grad_accum, start_step)
    meter = ThroughputMeter(FlopCounts.from_model(model), engine.module.num_visual_tokens, world,
                            peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
    validate_now = validation_steps(steps_per_epoch, t.val_every, t.val_per_epoch)
    dist = (rank, world, device, stage == 3 and world > 1)

    engine.train()
    step, loss_value = start_step, float("nan")
    damage, gather_damage = [], world > 1 and cfg.data.skip_damaged_shards  # damage met since the last log
    while step < total_steps:
        # The step's micro-batches are read before any forward pass: a rank whose data fails (an empty share, a
        # sample that does not decode) stops every rank here, where none waits in the gradient all-reduce.
        with fail_together():
            batches = [next(stream) for _ in range(t.grad_accum)]
        loss_sum = torch.zeros((), device=device)
        for epoch, batch in batches:
            with precision.autocast(device):
                loss = engine(**model_inputs(batch, device, precision.input_dtype)).loss
            engine.backward(loss)
            # Called on every micro-batch: DeepSpeed counts them and only updates the weights (and steps the
            # lr schedule) at the accumulation boundary; skipping calls would shift that boundary.
            engine.step()
            loss_sum += loss.detach()
            meter.add(batch)
            damage += batch.get("lost", ())  # --skip-damaged-shards only
        step += 1
        if world > 1:  # judged on the mean over ranks, so that a non-finite loss on one rank stops all of them
            torch.distributed.all_reduce(loss_sum)
        loss_value = float(loss_sum) / (t.grad_accum * world)  # the mean over the step's micro-batches and ranks
        if not math.isfinite(loss_value):
            raise AgreedError(f"loss is {loss_value} at step {step} (mean over {world} rank(s)); lower --lr or "
                              "use --precision fp32")

        if step % t.log_every == 0 or step == total_steps:
            if gather_damage:  # a sample that does not decode is met only by the rank that reads it
                damage = [record for part in gather_objects(damage) for record in part]
            for note in filter(None, map(lost.note, damage)):
                log.print(f"[yellow]warning:[/] {note}")
            damage = []
            record = {"epoch": epoch, "loss": loss_value, "lr": scheduler.get_last_lr()[0] if scheduler else t.lr,
                      **meter.read(), **({"lost_samples": lost.count} if lost.count else {})}
            status = f"loss {loss_value:.3f} lr {record['lr']:.2e} {record['samples_per_s']:.1f} samples/s {record['tokens_per_s']:.0f} tok/s"
            log.log(step, record, status + (f" MFU {record['mfu']:.1%}" if "mfu" in record else ""))
        else:
            log.advance(step)

        if validate_now(step) or step == total_steps:
            best = validate_and_export(engine, val_loader, cfg, precision, step, n_val, best, log, dist)
        if step % t.save_every == 0 or step == total_steps:
            save_resumable(engine, out, step, {"global_step": step, "steps_per_epoch": steps_per_epoch}, rank, world)

    log.close()
    return {"steps": step, "best": best, "final_loss": loss_value}
