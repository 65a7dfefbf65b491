"""What `train.precision` means for weights, DeepSpeed and autocast, in one place for training, validation,
evaluation and generation (so a run decodes in the precision it trained in).

    fp32        everything fp32                                   (the CPU default)
    bf16        everything bf16; DeepSpeed keeps fp32 masters of the trainables   (the CUDA default)
    bf16-mixed  frozen LLM bf16; trainable Swin and mapper fp32, run under bf16 autocast: Lightning's
                `bf16-mixed`, as the reference implementation trains
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from r2g.dist import auto_dtype
from r2g.errors import R2GError


@dataclass(frozen=True)
class Precision:
    name: str  # resolved: fp32, bf16 or bf16-mixed
    llm_dtype: torch.dtype  # the frozen LLM's weights
    ds_bf16: bool  # DeepSpeed's bf16 mode: casts the whole module (trainables included) to bf16
    autocast_dtype: torch.dtype | None

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype images enter the vision encoder in."""
        return torch.bfloat16 if self.ds_bf16 else torch.float32

    def autocast(self, device: torch.device):
        """The forward / generate context: bf16 autocast for bf16-mixed, nothing otherwise."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def resolve_precision(name: str, device: torch.device, zero_stage: int = 0) -> Precision:
    if name == "auto":
        name = "bf16" if auto_dtype(device) == torch.bfloat16 else "fp32"
    if name == "fp32":
        return Precision("fp32", torch.float32, False, None)
    if name == "bf16":
        return Precision("bf16", torch.bfloat16, True, None)
    if name == "bf16-mixed":
        if zero_stage == 3:
            # ZeRO-3 partitions every parameter in one dtype (zero.Init casts the module to it), so frozen bf16
            # and trainable fp32 weights cannot live side by side.
            raise R2GError("--precision bf16-mixed needs ZeRO-0/1/2 (--ds ds_configs/zero2.json); under ZeRO-3 "
                           "use --precision bf16")
        return Precision("bf16-mixed", torch.bfloat16, False, torch.bfloat16)
    raise R2GError(f"--precision '{name}' is unknown; choose auto, bf16, bf16-mixed or fp32")
