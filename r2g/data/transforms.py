"""Image transforms: what the Swin encoder expects (224 px, ImageNet statistics), as R2GenGPT's
HF image processor does it: a plain resize to a square, no crop, so nothing near the edges is lost.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_transform(size: int = 224, augment: bool = False) -> T.Compose:
    steps: list = [T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    if augment:
        # Small geometric and exposure jitter only. No horizontal flip: left and right carry meaning in a
        # radiograph (heart side, laterality words in the report).
        steps += [
            T.RandomAffine(degrees=5, translate=(0.03, 0.03), scale=(0.95, 1.05)),
            T.ColorJitter(brightness=0.1, contrast=0.1),
        ]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def to_rgb_tensor(img: Image.Image, transform: T.Compose) -> torch.Tensor:
    """(3, size, size) float tensor from a grayscale or colour PIL image."""
    return transform(img.convert("RGB"))
