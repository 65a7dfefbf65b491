"""What each --precision means for the LLM, DeepSpeed and autocast."""

import pytest
import torch

from r2g.errors import R2GError
from r2g.precision import resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_precision("auto", CUDA).name == "bf16" and resolve_precision("auto", CUDA).ds_bf16
    cpu = resolve_precision("auto", CPU)
    assert cpu.name == "fp32" and cpu.llm_dtype == torch.float32 and cpu.autocast_dtype is None


def test_bf16_mixed_keeps_trainables_fp32_under_autocast_and_the_llm_bf16():
    p = resolve_precision("bf16-mixed", CPU, zero_stage=2)
    assert (p.llm_dtype, p.ds_bf16, p.input_dtype, p.autocast_dtype) == (torch.bfloat16, False, torch.float32, torch.bfloat16)
    layer = torch.nn.Linear(4, 4)
    with p.autocast(CPU):
        out = layer(torch.randn(2, 4))
    assert layer.weight.dtype == torch.float32 and out.dtype == torch.bfloat16


def test_bf16_mixed_is_refused_under_zero3_and_fp16_is_unknown():
    with pytest.raises(R2GError, match="needs ZeRO-0/1/2"):
        resolve_precision("bf16-mixed", CUDA, zero_stage=3)
    with pytest.raises(R2GError, match="'fp16' is unknown"):
        resolve_precision("fp16", CPU)
