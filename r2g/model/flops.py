"""Training FLOPs of R2GenGPT per sample, for model FLOPs utilisation (MFU).

The usual 6 * N * tokens assumes every weight trains. Here the LLM is frozen, yet the loss must still flow
back through all of it to reach the visual tokens, so per sample (T = sequence length including the visual
tokens, P = LLM weights used in matmuls, L layers, d hidden size):

    LLM forward               2 * P * T   +  4 * L * T^2 * d   (attention: Q K^T and A V, 2 * 2 * L * T * d per token)
    LLM backward, frozen      2 * P * T   +  8 * L * T^2 * d   (input grads only: no weight grads, but attention's
                                                                 operands are activations, so it costs 2x forward)
    vision, per image         F (shallow: forward only) | 2 F (delta: + input grads back to the first LoRA;
                              LoRA weight grads are negligible) | 3 F (deep: + weight grads)
    mapper, per visual token  2 * C * d forward + 2 * C * d weight grad (+ 2 * C * d input grad unless shallow)

F is one image's forward through Swin, counted by torch's FlopCounterMode on a meta-device copy (Swin is
hierarchical: its weights act on a different number of tokens in each stage, so 2 * N * tokens does not
apply). Norms, softmax, activations and the optimizer are ignored, as in the PaLM MFU convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from r2g.config import ModelConfig

# Dense bf16 tensor-core peak FLOP/s by CUDA device name: NVIDIA's datasheets, which state the peaks with 2:4
# structured sparsity, halved. The longest key found in the name wins ("H100 NVL" before "H100", "GB200" before
# "B200"). A name not here has no MFU rather than a wrong one.
PEAK_FLOPS = {
    "A100": 312e12,  # A100 datasheet (SXM and PCIe): 312 TFLOPS dense, 624 sparse
    "H100": 989e12,  # H100 datasheet, SXM: 1,979 TFLOPS sparse
    "H100 PCIe": 756e12,  # H100 datasheet, PCIe: 1,513 sparse
    "H100 NVL": 835e12,  # H100 datasheet, NVL: 1,671 sparse
    "H200": 989e12,  # H200 datasheet, SXM: 1,979 sparse
    "H200 NVL": 835e12,  # H200 datasheet, NVL: 1,671 sparse
    "GH200": 989e12,  # GH200 datasheet: 1,979 sparse (an H100/H200 class GPU)
    "B200": 2250e12,  # HGX B200 datasheet, per GPU: FP16/BF16 4.5 PFLOPS sparse
    "GB200": 2500e12,  # GB200 NVL72 datasheet, per GPU: 5 PFLOPS sparse
}


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s for a device name such as torch.cuda.get_device_name() ("NVIDIA H100 80GB HBM3");
    None when unknown, e.g. for "cpu"."""
    keys = [key for key in PEAK_FLOPS if key in device_name]
    return PEAK_FLOPS[max(keys, key=len)] if keys else None


def mfu(flops_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved / peak FLOP/s (None without a known peak)."""
    return flops_per_s / peak if peak else None


def vision_forward_flops(cfg: ModelConfig) -> int:
    """FLOPs of one image through the vision encoder of `cfg`, at its default image size (no memory used)."""
    with torch.device("meta"):
        encoder = timm.create_model(cfg.vision_arch, pretrained=False, num_classes=0, **cfg.vision_kwargs)
    return encoder_forward_flops(encoder)


def encoder_forward_flops(encoder: nn.Module) -> int:
    """FLOPs of one image through a timm `encoder` (on the meta device, it costs no memory) at its default
    image size."""
    image = torch.empty(1, 3, *encoder.patch_embed.img_size, device=next(encoder.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        encoder.forward_features(image)
    return counter.get_total_flops()


@dataclass(frozen=True)
class FlopCounts:
    """The sizes the formula needs (see the module docstring)."""

    llm_matmul_params: int  # P: weights of every Linear in the LLM, lm_head included, embedding table not
    llm_layers: int  # L
    llm_hidden: int  # d
    vision_forward: int  # F: one image through the encoder
    vision_features: int  # C: channels of the vision tokens
    mode: str  # shallow | delta | deep

    @classmethod
    def from_model(cls, model: nn.Module) -> "FlopCounts":
        """Counts of an `R2GenGPT` (works under ZeRO-3 partitioning and on the meta device)."""
        linears = [m for m in model.llm.modules() if isinstance(m, nn.Linear)]
        text = model.llm.config.get_text_config()
        return cls(
            llm_matmul_params=sum(getattr(m.weight, "ds_numel", m.weight.numel()) for m in linears),
            llm_layers=text.num_hidden_layers,
            llm_hidden=text.hidden_size,
            vision_forward=vision_forward_flops(model.cfg),
            vision_features=model.vision.num_features,
            mode=model.cfg.mode,
        )


def train_flops_per_sample(counts: FlopCounts, seq_len: int, n_visual: int, n_images: float = 1.0) -> float:
    """Forward + backward FLOPs of one training sample: seq_len tokens in total (n_visual of them visual),
    n_images real views through the encoder (may be a batch average)."""
    P, L, d, T = counts.llm_matmul_params, counts.llm_layers, counts.llm_hidden, seq_len
    llm = (2 * P * T + 4 * L * T * T * d) + (2 * P * T + 8 * L * T * T * d)
    vision = {"shallow": 1, "delta": 2, "deep": 3}[counts.mode] * counts.vision_forward * n_images
    mapper = (4 if counts.mode == "shallow" else 6) * counts.vision_features * d * n_visual
    return float(llm + vision + mapper)
