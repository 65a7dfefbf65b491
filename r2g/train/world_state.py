"""The training state without ZeRO's per-process layout, which is what `--resume` loads on any process count.

DeepSpeed writes ZeRO's optimizer state as one partition per data-parallel rank and cannot load it on another
count; its universal checkpoint needs an offline conversion (ds_to_universal) between the runs. The trainables
are a few million weights, so r2g writes them whole with every checkpoint instead (`WORLD_STATE` in the tag
folder, rank 0): the fp32 masters and Adam's moments of every trainable weight by name, the optimizer's step
count (its bias correction) and hyperparameters (the lr the scheduler set for the next step), the lr
scheduler's position, DeepSpeed's step counters and r2g's client state. Loading it scatters each full tensor
into whatever partition this launch's ZeRO stage and process count give the rank, then the module's (bf16 or
fp32) working copies are set from the masters as DeepSpeed's own step does, so the loaded state is the saved
one bit for bit on the same or another count.

DeepSpeed's API reads and writes full tensors (deepspeed.utils safe_get/set_full_*; collectives under ZeRO-3:
every rank calls). Three things it leaves to the caller are done here against its optimizer wrappers: torch's
Adam creates its state at the first step, so a fresh engine has none to write into (`_create_adam_state`); the
low-precision working weights are refreshed from the masters only by a step (`_set_working_weights`); and its
ZeRO-3 setter fails on weights that do not split evenly over the processes (`_set_full`).
"""

from __future__ import annotations

import torch

from r2g.errors import R2GError

WORLD_STATE = "r2g_state.pt"
FORMAT = 1


def _torch_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer (AdamW) inside DeepSpeed's ZeRO or bf16 wrapper; under ZeRO-0 in fp32 it is unwrapped."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _partitions(engine) -> list[torch.Tensor]:
    """The fp32 tensors this rank's torch optimizer steps: its flat partition(s) of the masters under ZeRO-1/2/3
    and the bf16 optimizer, the module's own trainables under ZeRO-0 in fp32."""
    wrapper = engine.optimizer
    for attribute in ("fp32_partitioned_groups_flat",  # ZeRO-3
                      "single_partition_of_fp32_groups",  # ZeRO-1/2
                      "fp32_groups_flat_partition"):  # bf16 without ZeRO partitioning of gradients (ZeRO-0/1)
        if hasattr(wrapper, attribute):
            return list(getattr(wrapper, attribute))
    if isinstance(wrapper, torch.optim.Optimizer):
        return [p for group in wrapper.param_groups for p in group["params"]]
    raise R2GError(f"r2g cannot read the optimizer state of DeepSpeed's {type(wrapper).__name__}; use "
                   "ds_configs/zero2.json or zero3.json")


def _trainables(engine) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in engine.module.named_parameters() if p.requires_grad]


def gather_world_state(engine, masters: dict[str, torch.Tensor], client: dict, world: int) -> dict:
    """The state to write (every rank calls: collectives under ZeRO-3), given the full fp32 `masters`
    (checkpoint.gather_trainable's) and r2g's `client` state. Call after at least one optimizer step."""
    from deepspeed.utils import safe_get_full_optimizer_state

    adam = _torch_optimizer(engine)
    first = adam.state[_partitions(engine)[0]]
    keys = sorted(k for k in first if k != "step")  # exp_avg, exp_avg_sq (and max_exp_avg_sq with amsgrad)
    moments = {k: {} for k in keys}
    for name, p in _trainables(engine):
        for k in keys:
            full = safe_get_full_optimizer_state(p, k)
            if full is None:  # ZeRO-0 in fp32: the torch optimizer holds the module's own weights
                full = adam.state[p][k]
            moments[k][name] = full.detach().cpu().float().clone()
    scheduler = engine.lr_scheduler
    return {
        "format": FORMAT,
        "world": world,
        "masters": masters,
        "moments": moments,
        "step": first["step"].detach().cpu().clone() if torch.is_tensor(first["step"]) else first["step"],
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in adam.param_groups],
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "counters": {"global_steps": engine.global_steps, "global_samples": engine.global_samples,
                     "skipped_steps": engine.skipped_steps},
        "client": client,
    }


def load_world_state(engine, state: dict) -> None:
    """Set `state` (`gather_world_state`'s, of any process count) into a freshly built engine (every rank)."""
    if state.get("format") != FORMAT:
        raise R2GError(f"the checkpoint's {WORLD_STATE} is of format {state.get('format')}, this r2g reads {FORMAT}; "
                       "resume with the r2g version that wrote it")
    masters, moments = state["masters"], state["moments"]
    named = _trainables(engine)
    names = {name for name, _ in named}
    if names != set(masters):
        missing, extra = sorted(names - set(masters)), sorted(set(masters) - names)
        raise R2GError(f"the checkpoint's trainable weights are not this model's (missing: {missing[:3]}, "
                       f"unexpected: {extra[:3]}); resume with the settings of the run that saved it")
    adam = _create_adam_state(engine, state["step"], list(moments))
    if len(adam.param_groups) != len(state["param_groups"]):
        raise R2GError(f"the checkpoint's optimizer has {len(state['param_groups'])} parameter groups, this "
                       f"launch's {len(adam.param_groups)}; resume with the settings of the run that saved it")
    for group, saved in zip(adam.param_groups, state["param_groups"]):
        group.update(saved)  # the lr (and betas, decay) the scheduler had set for the next step
    for name, p in named:
        for key, values in moments.items():
            if _has_master(p):
                _set_full(p, values[name], key)
            else:  # ZeRO-0 in fp32: the torch optimizer steps the module's own weights
                adam.state[p][key].copy_(values[name])
        if _has_master(p):
            _set_full(p, masters[name])
    _set_working_weights(named, masters)  # without a separate master (ZeRO-0 fp32) this sets the master itself
    if engine.lr_scheduler is not None and state["scheduler"] is not None:
        engine.lr_scheduler.load_state_dict(state["scheduler"])
    counters = state["counters"]
    engine.global_steps, engine.global_samples = counters["global_steps"], counters["global_samples"]
    engine.skipped_steps = counters["skipped_steps"]
    # Micro-batches so far, in this launch's accumulation (it may differ from the saving run's when the process
    # count changed under --global-batch): DeepSpeed finds the step boundary from it.
    engine.micro_steps = engine.global_steps * engine.gradient_accumulation_steps()


def _has_master(p: torch.nn.Parameter) -> bool:
    """Whether DeepSpeed keeps an fp32 master of `p` apart from it (ZeRO-1/2/3, bf16 optimizer)."""
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def _set_full(p: torch.nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
    """This rank's part of `p`'s master (`key` None) or optimizer state `key` := its part of the full `value`.
    DeepSpeed's safe_set_full_* do this, except that under ZeRO-3 (0.19.8) they read the last rank's slice past
    the end of `value` when `p` does not split evenly over the processes (its partitions are padded, e.g. 16384
    weights over 3 ranks are 3 × 5462): here the slice is cut at the end and the padding left alone."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if not hasattr(p, "ds_id"):
        if key is None:
            safe_set_full_fp32_param(p, value)
        else:
            safe_set_full_optimizer_state(p, value, key)
        return
    zero3 = p._z3_optimizer
    part, _ = zero3._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
    n = part.numel()
    piece = value.flatten()[n * zero3._get_param_partition_rank(p):][:n]
    part.data[: piece.numel()].copy_(piece)


def _create_adam_state(engine, step, keys: list[str]) -> torch.optim.Optimizer:
    """Adam's state for every partition this rank steps, as torch creates it at the first step (moments zero,
    the step count `step`), linked to DeepSpeed's per-weight views; the values are written after."""
    adam = _torch_optimizer(engine)
    fused = any(g.get("fused") or g.get("capturable") for g in adam.param_groups) or adam.defaults.get("fused")
    for flat in _partitions(engine):
        count = step.clone() if torch.is_tensor(step) else step
        if torch.is_tensor(count) and fused:  # torch keeps a fused Adam's step on the weights' device
            count = count.to(flat.device)
        adam.state[flat] = {"step": count, **{k: torch.zeros_like(flat) for k in keys}}
    if hasattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2, bf16 optimizer
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()
    return adam


def _set_working_weights(named: list[tuple[str, torch.nn.Parameter]], masters: dict[str, torch.Tensor]) -> None:
    """The module's working copies (bf16 or fp32) := the masters, as after an optimizer step. Under ZeRO-3 each
    rank's partition is written from rank 0's full copy (all ranks hold the same masters)."""
    import deepspeed

    zero3 = [(name, p) for name, p in named if hasattr(p, "ds_id")]
    if zero3:
        with deepspeed.zero.GatheredParameters([p for _, p in zero3], modifier_rank=0):
            for name, p in zero3:
                p.data.copy_(masters[name].to(p.dtype))
    for name, p in named:
        if not hasattr(p, "ds_id"):
            p.data.copy_(masters[name].to(p.dtype))
