"""Supervised pretraining of the vision encoder on CheXpert-style targets: the demo's stand-in for pretrained
weights.

R2GenGPT starts from an ImageNet Swin. None can be downloaded here, and a random-init Swin's tokens do not
state the findings in a form the linear mapper can pass on in a few hundred steps (bench/RESULTS.md). So
the demo first trains its small Swin to recognise the observations in the train images, as chest X-ray
encoders are pretrained, and loads the result through `model.vision_weights` like any other checkpoint.

The head scores every visual token with one shared Linear (after a BatchNorm over channels) and pools the
scores over tokens with log-sum-exp, so each token learns to state what lies in its own region, which is
the form a per-token mapper reads, and a finding confined to a few tokens (a device, a nodule) still
dominates its pooled score. Only the encoder is saved (timm names, safetensors); the head is discarded.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from r2g.config import DataConfig, ModelConfig
from r2g.data.loader import make_loader, split_shards
from r2g.errors import R2GError
from r2g.model.vision import build_vision_encoder, encode


class TokenScoreHead(nn.Module):
    """(B, N, C) visual tokens -> (B, n_labels) logits: a shared per-token Linear, log-sum-exp over tokens."""

    def __init__(self, channels: int, n_labels: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)
        self.score = nn.Linear(channels, n_labels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, N, C = tokens.shape
        per_token = self.score(self.norm(tokens.reshape(B * N, C))).view(B, N, -1)
        # Minus log N: a score spread evenly over all tokens pools to itself, as a mean would.
        return torch.logsumexp(per_token, dim=1) - math.log(N)


def balanced_pos_weight(targets: torch.Tensor, cap: float = 10.0) -> torch.Tensor:
    """BCE pos_weight = negatives / positives per label (capped), so rare findings are not learned as
    'always absent'. targets: (n, n_labels) of 0/1."""
    positives = targets.sum(0)
    return ((len(targets) - positives) / positives.clamp(min=1)).clamp(max=cap)


def batch_targets(targets: dict[str, torch.Tensor], ids: list[str]) -> torch.Tensor:
    """(B, n_labels) float targets of a batch's studies; a study without one is an error, not a skip."""
    missing = [i for i in ids if i not in targets]
    if missing:
        raise R2GError(f"encoder pretraining: no target for train study '{missing[0]}' ({len(missing)} in this "
                       "batch); give a target for every train study")
    return torch.stack([targets[i] for i in ids]).float()


def pretrain_vision(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    targets: dict[str, torch.Tensor],
    out: str | Path,
    steps: int,
    lr: float = 3e-4,
    batch_size: int = 12,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train the encoder `model_cfg` describes (all of it, from `model_cfg.vision_weights` or random init) on
    the train split of `data_cfg.shards`, against `targets` (study id -> (n_labels,) 0/1 tensor), and save it
    to `out` as safetensors. Returns {"losses" (every 50 steps), "seconds", "out"}."""
    if not targets:
        raise R2GError("encoder pretraining: no targets given; give a target for every train study")
    torch.manual_seed(seed)
    encoder = build_vision_encoder(dataclasses.replace(model_cfg, mode="deep"))
    n_labels = len(next(iter(targets.values())))
    head = TokenScoreHead(encoder.num_features, n_labels)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=balanced_pos_weight(torch.stack(list(targets.values()))))
    loader, pipeline = make_loader(split_shards(data_cfg.shards, "train", data_cfg.skip_damaged_shards), data_cfg,
                                   batch_size=batch_size, train=True, seed=seed)

    start, losses, step, epoch = time.perf_counter(), [], 0, 0
    encoder.train()
    while step < steps:
        pipeline.set_epoch(epoch)
        read = 0
        for batch in loader:
            read += 1
            for group in optimizer.param_groups:  # warmup, then cosine to zero
                group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
            tokens = encode(encoder, batch["images"], batch["view_mask"], model_cfg.view_merge)
            loss = loss_fn(head(tokens), batch_targets(targets, batch["ids"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 50 == 0 or step == steps - 1:
                losses.append(round(loss.item(), 4))
                if log:
                    log(f"encoder pretraining step {step + 1}/{steps}: loss {loss.item():.3f}")
            step += 1
            if step == steps:
                break
        if read == 0:
            raise R2GError(f"{data_cfg.shards}: the train split gave no batches")
        epoch += 1

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: t.detach().contiguous() for name, t in encoder.state_dict().items()}, str(out))
    return {"losses": losses, "seconds": time.perf_counter() - start, "out": str(out)}
