"""Load a local Hugging Face causal LM tensor-parallel (DeepSpeed AutoTP): each rank holds and reads only its slice.

`deepspeed.init_inference(model, tensor_parallel={"tp_size": N}, replace_with_kernel_inject=False)` replaces
each decoder layer's linears with AutoTP's column-parallel (`LinearLayer`: q/k/v, gate/up, rows split) and
row-parallel (`LinearAllreduce`: o_proj, down_proj, columns split, outputs all-reduced) layers, and the LM head
with a row-parallel one; norms and the input embeddings stay whole on every rank. Given a model whose
parameters are on the meta device, AutoTP slices shapes only and then allocates each rank's slices
(`to_empty`), so no rank ever holds more than its slices: they are then read straight from the safetensors
files (r2g/model/zero3_load.py's positioned reads, no mmap), using the partition AutoTP froze in each
layer (dimension and per-rank sizes). Buffers (RoPE frequencies) are computed on the CPU at build time
and put back after AutoTP, whose `to_empty` and dtype cast would otherwise leave them uninitialised or rounded.

Unlike ZeRO-3, which gathers every layer's weights for every forward pass, the slices stay put and only
activations travel: two all-reduces of the hidden states per layer and one for the logits per token step.
Every rank runs the same forward pass on the same inputs.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from r2g.dist import fail_together
from r2g.errors import R2GError
from r2g.model.zero3_load import StoredTensor, read_elements, stored_tensors

ROWS_PER_READ = 1 << 22  # elements per read of a column slice (16 MiB in fp32): bounds the host buffer


def check_tensor_parallel(folder: str | Path, tp: int, world: int) -> None:
    """Refuse what AutoTP cannot split here: `tp` must be at most the LLM's key/value head count (a rank needs
    whole heads) and the launch's world size (every rank holds one slice of one copy: no data-parallel groups)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    heads = config.get("num_key_value_heads") or config.get("num_attention_heads")
    if heads is not None and tp > heads:
        raise R2GError(f"--tp {tp}: {folder}/config.json has {heads} key/value heads; each rank needs at least one, "
                       f"so --tp can be at most {heads}")
    if tp != world:
        raise R2GError(f"--tp {tp}: launch exactly {tp} processes, one per GPU (deepspeed or torchrun); this launch "
                       f"has {world}")


@contextmanager
def _parameters_on_meta():
    """Build modules with their parameters on the meta device (no memory) and their buffers on the CPU: a buffer
    such as RoPE's inv_freq is computed in __init__ and never stored in the checkpoint."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None:
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def partitions(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """{parameter name: (dimension, first index of this rank's slice, full length)} for each parameter AutoTP
    split, from its layer (the split sizes it froze, this rank's index); parameters not named are whole on
    every rank. Only the plain column- and row-parallel layers are read this way: a model whose AutoTP split
    needs another (fused QKV, packed gate/up, Conv1D) is refused."""
    from deepspeed.module_inject.layers import LinearAllreduce, LinearLayer, LmHeadLinearAllreduce, TensorParallel_Layer

    found = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, TensorParallel_Layer):
            continue
        if type(module) not in (LinearLayer, LinearAllreduce, LmHeadLinearAllreduce):
            raise R2GError(f"--tp: AutoTP splits {prefix} of this LLM with {type(module).__name__}, which r2g's "
                           "tensor-parallel loading does not read; decode it with --ds ds_configs/zero3.json instead")
        sizes, rank = module._partition_sizes, module.tp_index
        row_parallel = isinstance(module, LinearAllreduce)  # its input features split; its bias whole
        found[f"{prefix}.weight"] = (1 if row_parallel else 0, sum(sizes[:rank]), sum(sizes))
        if module.bias is not None and not row_parallel:
            found[f"{prefix}.bias"] = (0, sum(sizes[:rank]), sum(sizes))
    return found


def read_slice(stored: StoredTensor, dim: int | None, start: int, out: torch.Tensor) -> None:
    """Copy the slice of the stored tensor that starts at index `start` along `dim` and has `out`'s shape (the
    whole tensor for dim None) into `out`. A slice along dim 0 is one contiguous run of bytes, read alone; a slice
    of a matrix's columns (row-parallel layers) is read in blocks of whole rows (ROWS_PER_READ elements at most),
    keeping its columns: each rank reads those matrices' bytes whole but holds one block beyond its slice."""
    if dim is None or dim == 0:
        row = out[0].numel() if out.dim() > 1 else 1
        read_elements(stored, start * row, out.view(-1))
        return
    if dim != 1 or out.dim() != 2:
        raise R2GError(f"{stored.file}: tensor-parallel loading splits matrices by rows or columns, not along "
                       f"dim {dim} of shape {list(stored.shape)}")
    n_rows, n_cols = stored.shape
    block = max(1, ROWS_PER_READ // n_cols)
    for first in range(0, n_rows, block):
        rows = min(block, n_rows - first)
        buf = torch.empty(rows * n_cols, dtype=out.dtype)
        read_elements(stored, first * n_cols, buf)
        out[first : first + rows].copy_(buf.view(rows, n_cols)[:, start : start + out.shape[1]])


def _all_reduce_through_process_group() -> None:
    """On CPU ranks DeepSpeed all-reduces AutoTP's activations with its shared-memory kernel (deepspeed_shm_comm)
    when it could build it; here (deepspeed 0.19.8, an x86 CPU with avx2 but not avx512) that kernel kills the
    first forward pass with SIGSEGV. DeepSpeed has no switch to choose the process group's all-reduce
    (deepspeedai/DeepSpeed#7625) but falls back to it when the kernel's vector level is too low for the dtype:
    level 0 makes it always do so. On CUDA the kernel is not built and NCCL all-reduces."""
    import deepspeed.comm.comm as ds_comm

    if getattr(ds_comm.cdb, "shm_comm_op", None) is not None:
        ds_comm.cdb.shm_vector_kernel_level = 0


def load_tensor_parallel(folder: str | Path, dtype: torch.dtype, tp: int):
    """The causal LM in `folder`, its linear layers split over the `tp` ranks of the launch by DeepSpeed AutoTP,
    each rank holding and having read only its slices (plus the norms and input embeddings, which every rank
    holds whole). Needs the process group (r2g.dist.init_distributed) to be up, with world size `tp`."""
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    folder = Path(folder)
    check_tensor_parallel(folder, tp, dist.get_world_size())
    tensors = stored_tensors(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with no_init_weights(), _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # A tied LM head has no tensor of its own in the checkpoint: AutoTP gives it a slice of its own, read from
    # the input embeddings' tensor.
    param_name = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    tied = {}
    if getattr(config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        tied[param_name[id(model.get_output_embeddings().weight)]] = param_name[id(model.get_input_embeddings().weight)]
    buffers = {name: b for name, b in model.named_buffers()}
    _all_reduce_through_process_group()
    engine = deepspeed.init_inference(model, dtype=dtype, tensor_parallel={"tp_size": tp},
                                      replace_with_kernel_inject=False, keep_module_on_host=False)
    model = engine.module
    for name, module in model.named_modules():
        for key in module._buffers:
            full = f"{name}.{key}" if name else key
            if full in buffers:
                module._buffers[key] = buffers[full].to(module._buffers[key].device)
    _fill_slices(model, tensors, tied, folder)
    model.eval()
    return model


@torch.no_grad()
def _fill_slices(model: nn.Module, tensors: dict[str, StoredTensor], tied: dict[str, str], folder: Path) -> None:
    """Read each parameter's slice (`partitions`), or the whole of a parameter AutoTP left whole."""
    missing = [n for n, _ in model.named_parameters() if tied.get(n, n) not in tensors]
    if missing:
        raise R2GError(f"{folder}: the checkpoint lacks {len(missing)} of the model's weights (e.g. {missing[:3]}); "
                       "the folder's config.json and safetensors files do not belong together")
    split = partitions(model)
    with fail_together():  # each rank reads other bytes: a damaged file can fail on one rank alone
        for name, p in model.named_parameters():
            stored = tensors[tied.get(name, name)]
            dim, start, full = split.get(name, (None, 0, 0))
            expected = list(p.shape)
            if dim is not None:
                expected[dim] = full
            if list(stored.shape) != expected:
                raise R2GError(f"{folder}: {name} is stored with shape {list(stored.shape)}, the model built from "
                               f"config.json wants {expected}")
            read_slice(stored, dim, start, p.data)


def llm_elements_split(llm) -> tuple[int, int]:
    """(weights this rank holds, weights in the LLM) for a tensor-parallel LLM (`load_tensor_parallel`)."""
    split = partitions(llm)
    held = total = 0
    for name, p in llm.named_parameters():
        shape = list(p.shape)
        if name in split:  # a rank's slice may be empty (AutoTP splits the LM head's input in blocks of 64)
            shape[split[name][0]] = split[name][2]
        held, total = held + p.numel(), total + torch.Size(shape).numel()
    return held, total
