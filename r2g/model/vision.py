"""The image side: a timm Swin Transformer, its weights, its training mode, and study-level visual tokens.

R2GenGPT encodes each view with Swin, keeps the last stage's token grid (7 x 7 = 49 tokens of 1024 channels
for Swin-B at 224 px) and averages the grids of a study's views. Three ways to train it (`ModelConfig.mode`):

- shallow: Swin frozen; only the mapper (in r2gen.py) trains.
- delta:   Swin frozen, plus LoRA on the query and value projections of every attention block (`QVLoRA`).
- deep:    the whole Swin trains.

In every mode the encoder follows the model's train()/eval() switch, as in the reference, so timm's default
stochastic depth (drop_path_rate 0.1, like the HF checkpoint the reference uses) is active while training even
when Swin is frozen; `ModelConfig.vision_kwargs={"drop_path_rate": 0.0}` turns it off.
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from r2g.config import RANDOM_WEIGHTS, ModelConfig
from r2g.errors import R2GError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------------------------------------- LoRA


class QVLoRA(nn.Module):
    """A fused qkv Linear with LoRA on its query and value thirds (the paper's delta tuning).

    timm computes q, k and v with one Linear of `3 * dim` outputs laid out [q | k | v]. This module takes over
    that Linear's weight and bias (kept frozen, under the same names, so the state dict still reads like timm's)
    and adds, on the q and v thirds only:  delta = (alpha / r) * B @ A @ dropout(x).
    A starts kaiming-uniform and B at zero, so at init the output equals the original Linear's.
    """

    def __init__(self, qkv: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        dim, out = qkv.in_features, qkv.out_features
        if out != 3 * dim:
            raise ValueError(f"expected a fused qkv Linear with 3 * {dim} outputs, got {out}")
        self.weight = qkv.weight.requires_grad_(False)
        self.bias = qkv.bias.requires_grad_(False) if qkv.bias is not None else None
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_q_A = nn.Parameter(torch.empty(r, dim, dtype=qkv.weight.dtype, device=qkv.weight.device))
        self.lora_q_B = nn.Parameter(torch.zeros(dim, r, dtype=qkv.weight.dtype, device=qkv.weight.device))
        self.lora_v_A = nn.Parameter(torch.empty(r, dim, dtype=qkv.weight.dtype, device=qkv.weight.device))
        self.lora_v_B = nn.Parameter(torch.zeros(dim, r, dtype=qkv.weight.dtype, device=qkv.weight.device))
        # Same init as loralib / peft: A ~ kaiming-uniform(a=sqrt(5)), B = 0.
        nn.init.kaiming_uniform_(self.lora_q_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_v_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., 3 * dim)."""
        out = F.linear(x, self.weight, self.bias)
        h = self.dropout(x)
        dq = F.linear(F.linear(h, self.lora_q_A), self.lora_q_B)
        dv = F.linear(F.linear(h, self.lora_v_A), self.lora_v_B)
        return out + self.scale * torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


def add_qv_lora(encoder: nn.Module, r: int, alpha: float, dropout: float) -> int:
    """Replace every `attn.qkv` Linear of a timm encoder with a `QVLoRA`; returns how many were replaced."""
    targets = [m for m in encoder.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)]
    for attn in targets:
        attn.qkv = QVLoRA(attn.qkv, r, alpha, dropout)
    return len(targets)


def set_mode(encoder: nn.Module, cfg: ModelConfig) -> None:
    """Freeze / adapt the encoder for `cfg.mode` (shallow, delta or deep); see the module docstring."""
    encoder.requires_grad_(cfg.mode == "deep")
    if cfg.mode == "delta" and add_qv_lora(encoder, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == 0:
        raise R2GError(
            f"model.mode 'delta' needs fused attention `attn.qkv` Linear layers (timm Swin / ViT), "
            f"but model.vision_arch '{cfg.vision_arch}' has none; use mode shallow or deep"
        )


# ------------------------------------------------------------------------------------------- weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local .safetensors / .pth / .bin file, or of a folder holding model.safetensors or
    pytorch_model.bin (a Hugging Face model folder)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise R2GError(f"model.vision_weights: folder {path} has none of {list(WEIGHT_FILES)}")
        path = found[0]
    if not path.is_file():
        raise R2GError(f"model.vision_weights: {path} not found; give a local .safetensors/.pth/.bin file or folder")
    try:
        if path.suffix == ".safetensors":
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with arbitrary objects, ...
        raise R2GError(f"model.vision_weights: cannot read {path} ({type(e).__name__}: {e})") from None
    for wrapper in ("model", "state_dict"):  # training checkpoints nest the weights
        if isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    return sd


_HF_QKV = re.compile(r"^(.*)\.attention\.(?:self\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")
# Hugging Face SwinModel names -> original Swin / timm names. Both HF layouts: hub checkpoints such as
# microsoft/swin-base-patch4-window7-224 (attention.self.query, intermediate.dense, ...) and transformers 5's
# (attention.q_proj, mlp.fc1, ...). Order matters: attention.output.dense before output.dense.
_HF_RENAMES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.", "layers."),
    (r"^layernorm\.", "norm."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.(?:self|relative_position_bias)\.(relative_position_bias_table)$", r".attn.\1"),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]


def hf_swin_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face SwinModel state dict (prefix already stripped) to the original Swin layout.

    The original layout is timm's except that a stage's patch merging ("downsample") sits at the END of stage i
    (as in HF) rather than at the START of stage i+1; timm's own checkpoint filter shifts it afterwards.
    HF's separate query/key/value Linears are concatenated into the fused `attn.qkv` ([q | k | v] rows,
    heads contiguous inside each third, which is how timm splits them).
    """
    out, qkv = {}, {}
    for key, value in sd.items():
        m = _HF_QKV.match(key)
        if m:
            prefix, which, kind = m.groups()
            qkv.setdefault((prefix, kind), {})[which[0]] = value  # 'q' from query or q_proj, ...
            continue
        for pattern, repl in _HF_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise R2GError(f"model.vision_weights: {prefix}.attention has {sorted(parts)} {kind}s, need q, k and v")
        block = re.sub(r"^encoder\.layers\.", "layers.", prefix)
        out[f"{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_timm_layout(sd: dict[str, torch.Tensor], encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Bring a timm, original-Swin or Hugging Face SwinModel state dict to the layout of `encoder`."""
    # Wrappers and heads: DDP's "module.", SwinForImageClassification's "swin." and "classifier.", timm's
    # "head." (the encoder has num_classes=0, so classification heads are dropped, not loaded).
    sd = {re.sub(r"^(module\.)?(swin\.)?", "", k): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("classifier.", "head."))}
    if any(k.startswith(("embeddings.", "encoder.layers.")) for k in sd):
        sd = hf_swin_to_original(sd)
    elif not any(k.startswith(("patch_embed.", "layers.")) for k in sd):
        raise R2GError(
            "model.vision_weights: unrecognised layout; expected timm keys like 'layers.0.blocks.0.attn.qkv.weight' "
            f"or Hugging Face SwinModel keys like 'swin.encoder.layers.0.blocks.0.attention.self.query.weight'; "
            f"found e.g. {sorted(sd)[:3]}"
        )
    # timm's per-architecture filter moves the downsample to timm's place, drops non-persistent buffers
    # (relative_position_index, attn_mask) and resizes position tables / patch embeddings where needed.
    filter_fn = getattr(importlib.import_module(type(encoder).__module__), "checkpoint_filter_fn", None)
    return filter_fn(sd, encoder) if filter_fn else sd


def state_dict_mismatch(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> str:
    """What keeps `sd` from loading strictly where `expected` lives: missing, unexpected and wrongly shaped
    names, a few of each; "" when it fits."""
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and sd[k].shape != v.shape]
    if not (missing or unexpected or wrong):
        return ""
    return (f"missing {len(missing)}: {missing[:4]}; unexpected {len(unexpected)}: {unexpected[:4]}; "
            f"wrong shape {len(wrong)}: {wrong[:2]}")


def load_vision_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local timm / original Swin / Hugging Face SwinModel checkpoint into `encoder`, strictly."""
    sd = to_timm_layout(read_state_dict(path), encoder)
    mismatch = state_dict_mismatch(encoder.state_dict(), sd)
    if mismatch:
        raise R2GError(f"model.vision_weights: {path} does not fit model.vision_arch ({mismatch}); "
                       "check the file and vision_arch / vision_kwargs")
    encoder.load_state_dict(sd)


# ------------------------------------------------------------------------------------- build / encode


def enable_grad_ckpt(encoder: nn.Module, cfg: ModelConfig) -> None:
    """Activation checkpointing of the encoder's blocks when its backward runs (delta: LoRA inside every block;
    deep: all of Swin); a frozen shallow-mode encoder keeps no activations to save.

    timm checkpoints non-reentrantly unless TIMM_REENTRANT_CKPT is set; reentrant checkpointing would silently
    drop delta mode's LoRA gradients (the blocks' input, from the frozen patch embedding, needs no grad)."""
    if cfg.mode == "shallow":
        return
    if not hasattr(encoder, "set_grad_checkpointing"):
        raise R2GError(f"--grad-ckpt: timm model '{cfg.vision_arch}' cannot checkpoint its activations; "
                       "train without --grad-ckpt")
    if timm.layers.use_reentrant_ckpt():
        raise R2GError("--grad-ckpt: TIMM_REENTRANT_CKPT is set, and reentrant checkpointing drops Swin's LoRA "
                       "gradients; unset it")
    encoder.set_grad_checkpointing(True)


RANDOM_SWIN_SEED = 0


def build_vision_encoder(cfg: ModelConfig) -> nn.Module:
    """timm `cfg.vision_arch` without a head, weights from `cfg.vision_weights` (None or "none": random init),
    frozen / LoRA-adapted for `cfg.mode`, its blocks checkpointed with `cfg.grad_ckpt`."""
    try:
        # A run's random Swin (--vision-weights none) is not saved with it, only its trainables are: draw it from
        # a fixed seed, whatever the RNG state, so that eval, generate and a ZeRO-3 load (whose LLM init draws
        # differently) rebuild the very encoder the run trained with. (Unset, in library use such as the demo's
        # Swin pretraining, it comes from the caller's RNG.)
        with torch.random.fork_rng(devices=[], enabled=cfg.vision_weights == RANDOM_WEIGHTS):
            if cfg.vision_weights == RANDOM_WEIGHTS:
                torch.manual_seed(RANDOM_SWIN_SEED)
            encoder = timm.create_model(cfg.vision_arch, pretrained=False, num_classes=0, **cfg.vision_kwargs)
    except (RuntimeError, TypeError) as e:  # unknown arch name, bad keyword
        raise R2GError(f"model.vision_arch / vision_kwargs: timm cannot build '{cfg.vision_arch}' ({e})") from None
    if cfg.vision_weights_file:
        load_vision_weights(encoder, cfg.vision_weights_file)  # before LoRA, so the names are plain timm names
    set_mode(encoder, cfg)
    if cfg.grad_ckpt:
        enable_grad_ckpt(encoder, cfg)
    return encoder


def tokens_per_view(encoder: nn.Module) -> int:
    """Number of grid tokens the encoder gives per image (49 for Swin at 224 px)."""
    return math.prod(encoder.layers[-1].output_resolution)


def num_visual_tokens(encoder: nn.Module, n_views: int, view_merge: str) -> int:
    """Visual tokens per study: one grid for `mean`, `n_views` grids for `concat`."""
    return tokens_per_view(encoder) * (n_views if view_merge == "concat" else 1)


def encode(encoder: nn.Module, images: torch.Tensor, view_mask: torch.Tensor, view_merge: str) -> torch.Tensor:
    """Study-level visual tokens.

    images: (B, V, 3, H, W), view_mask: (B, V) bool, True for real views (each study has at least one).
    Returns (B, N, C): N = 49 for `mean` (masked mean of the real views' grids, as the reference) or V * 49 for
    `concat` (the views' grids side by side; a missing view's slot holds the mean of the study's real views,
    i.e. a one-view study repeats its view, so every study in the batch has the same N and nothing is masked).

    Pass view_mask on the CPU, as the loader makes it: it is checked and turned into indices there, so the
    forward pass waits on no copy back from the GPU (on the images' device it works too, at that cost).
    """
    B, V = view_mask.shape
    if not bool(view_mask.any(dim=1).all()):
        raise ValueError("every study needs at least one real view (view_mask has an all-False row)")
    real = view_mask.flatten().nonzero().squeeze(1).to(images.device, non_blocking=True)  # (n_real,) view slots
    view_mask = view_mask.to(images.device, non_blocking=True)
    # One batched Swin call over the real views only; padded views cost nothing.
    feats = encoder.forward_features(images.flatten(0, 1).index_select(0, real))  # (n_real, h, w, C)
    feats = feats.flatten(1, 2)  # (n_real, N, C)
    grids = feats.new_zeros(B * V, *feats.shape[1:]).index_copy(0, real, feats).unflatten(0, (B, V))  # zeros at padded views
    n_real = view_mask.sum(dim=1).to(feats.dtype)[:, None, None]  # (B, 1, 1)
    mean = grids.sum(dim=1) / n_real  # (B, N, C)
    if view_merge == "mean":
        return mean
    filled = torch.where(view_mask[:, :, None, None], grids, mean[:, None])  # (B, V, N, C)
    return filled.flatten(1, 2)  # (B, V * N, C)
