"""The reference implementation's learning-rate schedule, for `train.lr_schedule = "epoch_cosine"`.

R2GenGPT (models/R2GenGPT.py, configure_optimizers) uses torch's CosineAnnealingLR(T_max=max_epochs,
eta_min=1e-6) stepped once per epoch by Lightning: the lr is constant within an epoch, starts at the peak and
falls to eta_min along a cosine over the epochs, with no warmup. DeepSpeed steps a client scheduler once per
optimizer step, so the epoch is derived from the step count.
"""

from __future__ import annotations

import math

import torch


def epoch_cosine_lr(step: int, lr: float, min_lr: float, steps_per_epoch: int, epochs: int) -> float:
    """The lr during optimizer step `step` (0-based)."""
    epoch = step // steps_per_epoch
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def epoch_cosine(optimizer, lr: float, min_lr: float, steps_per_epoch: int, epochs: int):
    """A LambdaLR (so DeepSpeed saves and restores its position with the checkpoint) giving `epoch_cosine_lr`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: epoch_cosine_lr(step, lr, min_lr, steps_per_epoch, epochs) / lr
    )
