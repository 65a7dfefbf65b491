"""Load a local Hugging Face causal LM straight into its ZeRO-3 partitions: no rank ever holds a full copy.

transformers' own ZeRO-3 path (`from_pretrained` under an `HfDeepSpeedConfig`) reads the whole checkpoint
on rank 0 and gathers every layer in full to copy it in, so rank 0 peaks near two full copies of the
weights (measured in shared/notes/zero3-loading.md): 28 GB for Llama-2-7B in bf16. Here every rank builds
the model under `deepspeed.zero.Init` from config.json alone (no weights, no random init), then reads from
the safetensors files only the bytes of its own partition of each parameter, through a host buffer of that
slice into `param.ds_tensor` (on the rank's GPU, or in host memory with offload_param).
Plain positioned reads rather than mmap: pages of an mmap-ed file count in the process's resident memory.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from r2g.dist import fail_together
from r2g.errors import R2GError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# safetensors dtype names (https://github.com/huggingface/safetensors, format spec) -> torch
_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes lie in a safetensors file (row-major, little-endian)."""
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # byte offset of the first element from the start of the file


def _read_header(file: Path) -> dict[str, StoredTensor]:
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] not in _DTYPES:
            raise R2GError(f"{file}: tensor {name} has dtype {entry['dtype']}, which r2g cannot load")
        tensors[name] = StoredTensor(file, _DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + size + entry["data_offsets"][0])
    return tensors


def stored_tensors(folder: str | Path) -> dict[str, StoredTensor]:
    """Every tensor of the checkpoint in `folder` (`model.safetensors`, or the shards its index names)."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        files = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    elif (folder / SINGLE).is_file():
        files = [SINGLE]
    else:
        raise R2GError(f"{folder}: no {SINGLE} or {INDEX}; ZeRO-3 loading reads safetensors weights only "
                       "(re-save the model with save_pretrained(..., safe_serialization=True))")
    tensors: dict[str, StoredTensor] = {}
    for name in files:
        if not (folder / name).is_file():
            raise R2GError(f"{folder / INDEX} names the shard {name}, which is missing")
        tensors.update(_read_header(folder / name))
    return tensors


def read_elements(stored: StoredTensor, start: int, out: torch.Tensor) -> None:
    """Copy elements [start, start + out.numel()) of the flattened stored tensor into the 1-D `out`, reading
    only those bytes. They are read into a host buffer of that size, then copied into `out` wherever it lives
    (a rank's partition sits on its GPU unless the --ds config offloads parameters) and in its dtype: `out` is
    only ever written by `copy_`, never reached through host memory."""
    buf = torch.empty(out.numel(), dtype=stored.dtype)
    raw = buf.view(torch.uint8).numpy()
    begin = stored.offset + start * buf.element_size()
    fd = os.open(stored.file, os.O_RDONLY)
    try:
        done = 0
        while done < raw.nbytes:
            n = os.preadv(fd, [raw[done:]], begin + done)
            if n <= 0:
                raise R2GError(f"{stored.file}: truncated (a tensor's bytes run past the end of the file)")
            done += n
        # Each rank reads a different part of the file once: keep the page cache for other processes.
        os.posix_fadvise(fd, begin, raw.nbytes, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    out.copy_(buf)


def _check_supported(ds_config: dict) -> None:
    zero = ds_config.get("zero_optimization", {})
    if zero.get("zero_hpz_partition_size", 1) > 1 or zero.get("offload_param", {}).get("device") == "nvme":
        raise R2GError("ZeRO-3 loading of the LLM writes each rank's own primary partition; it does not "
                       "support zero_hpz_partition_size > 1 or offload_param to nvme in the --ds config")


@torch.no_grad()
def fill_partitions(model: nn.Module, tensors: dict[str, StoredTensor], folder: Path) -> None:
    """Each rank copies its own slice of every parameter from the checkpoint into `param.ds_tensor` (DeepSpeed's
    layout: the flattened parameter padded to a multiple of the world size, rank r holding elements
    [r * n, (r + 1) * n)); buffers stored in the checkpoint are read whole, as ZeRO-3 does not partition them."""
    import torch.distributed as dist

    missing = [name for name, _ in model.named_parameters() if name not in tensors]
    if missing:
        raise R2GError(f"{folder}: the checkpoint lacks {len(missing)} of the model's weights (e.g. {missing[:3]}); "
                       "the folder's config.json and safetensors files do not belong together")
    # Each rank reads other bytes, so a damaged file can fail on one rank alone: all of them stop together.
    with fail_together():
        for name, p in model.named_parameters():
            stored = tensors[name]
            if stored.shape != tuple(p.ds_shape):
                raise R2GError(f"{folder}: {name} is stored with shape {list(stored.shape)}, the model built from "
                               f"config.json wants {list(p.ds_shape)}")
            part = p.ds_tensor
            start = part.numel() * dist.get_rank(group=p.ds_process_group)
            count = min(part.numel(), p.ds_numel - start)
            if count > 0:  # the last ranks' partitions may be all padding
                read_elements(stored, start, part.data[:count])
        for name, buf in model.named_buffers():
            if name in tensors and buf is not None:
                read_elements(tensors[name], 0, buf.view(-1))


def load_partitioned(folder: str | Path, dtype: torch.dtype, ds_config: dict) -> nn.Module:
    """The causal LM in `folder`, built and loaded under ZeRO-3 with `ds_config` (the resolved DeepSpeed config):
    every rank ends up holding its partition of each weight and never more than one tensor's slice besides.
    Needs the process group (deepspeed.init_distributed) to be up."""
    import deepspeed
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import prevent_arange_dtype_change
    from transformers.modeling_utils import set_zero3_state

    folder = Path(folder)
    _check_supported(ds_config)
    tensors = stored_tensors(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    # What from_pretrained does under ZeRO-3, minus its weight loading: skip random init (every weight is
    # read below), keep RoPE's arange out of zero.Init's dtype cast, and set_zero3_state so that transformers
    # does not open a second zero.Init of its own when an HfDeepSpeedConfig is alive.
    with no_init_weights(), prevent_arange_dtype_change(), deepspeed.zero.Init(config_dict_or_path=ds_config), \
            set_zero3_state():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # skipped with the init above; a tied lm_head has no tensor of its own in the checkpoint
    fill_partitions(model, tensors, folder)
    model.eval()
    return model


def llm_elements_held(llm) -> tuple[int, int]:
    """(weights this rank stores, weights in the LLM): under ZeRO-3 each rank keeps only its partition."""
    held = total = 0
    for p in llm.parameters():
        if hasattr(p, "ds_tensor"):  # ZeRO-3 partitioned parameter
            held, total = held + p.ds_tensor.numel(), total + p.ds_numel
        else:
            held, total = held + p.numel(), total + p.numel()
    return held, total
