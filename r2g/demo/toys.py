"""Small random stand-ins for tests and benches: a raw dataset in the R2Gen layout, a micro Swin, a tiny Llama.

They exercise the real loading code (annotation.json + image folders, local HF folders) where no weights or data
can be downloaded. Unlike `r2g.demo.dataset`, whose studies look like chest X-rays with findings, these are the
smallest inputs that still have the real shapes and layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from r2g.labels import CHEXPERT_LABELS


def write_raw_dataset(root: Path, per_split=(6, 2, 3), two_views_every=2, size=32, ext="png") -> Path:
    """annotation.json + images/ with `per_split` studies; every `two_views_every`-th study has 2 views.

    Pixel values encode the study index so tests can tell images apart. Returns the annotation path.
    """
    images = root / "images"
    ann: dict = {}
    index = 0
    for split, n in zip(("train", "val", "test"), per_split):
        entries = []
        for _ in range(n):
            sid = f"s{index:04d}"
            n_views = 2 if two_views_every and index % two_views_every == 0 else 1
            paths = []
            for v in range(n_views):
                rel = f"{sid}/{v}.{ext}"
                (images / sid).mkdir(parents=True, exist_ok=True)
                pixels = np.full((size, size + 8), (index * 7 + v * 3) % 256, dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(images / rel)
                paths.append(rel)
            labels = {name: None for name in CHEXPERT_LABELS}
            labels["Cardiomegaly"] = 1 if index % 3 == 0 else 0
            entries.append(
                {"id": sid, "report": f"Study {index}. The Heart: normal-sized.", "image_path": paths,
                 "split": split, "labels": labels}
            )
            index += 1
        ann[split] = entries
    path = root / "annotation.json"
    path.write_text(json.dumps(ann, indent=1))
    return path


# A timm Swin small enough for CPU tests: 64 px input, 2x2 final grid (4 visual tokens per view), 256-d.
TINY_VISION_KWARGS = {"img_size": 64, "window_size": 2, "embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}


def xray_like(size: tuple[int, int], grain: float, seed: int = 0) -> Image.Image:
    """A grayscale (width, height) image with an X-ray's kinds of content, for decode speed and quality checks:
    smooth shading (lungs, mediastinum), rib-like bands, a coarse texture and per-pixel grain of std `grain`
    (in units of full scale). The grain sets how much a JPEG of it weighs, and so how long it takes to decode."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = x / w - 0.5 + rng.normal(0, 0.02), y / h - 0.5
    img = 0.75 - 0.35 * np.exp(-(((np.abs(u) - 0.2) / 0.16) ** 2 + ((v + 0.02) / 0.3) ** 2))  # darker lungs
    img += 0.08 * np.sin(2 * np.pi * (v * 14 + 3 * u ** 2)) * (np.abs(u) > 0.05)  # ribs
    img += 0.25 * np.exp(-((u / 0.07) ** 2))  # mediastinum
    coarse = rng.normal(0, 1, (h // 16 + 1, w // 16 + 1)).astype(np.float32)
    img += 0.03 * np.kron(coarse, np.ones((16, 16), np.float32))[:h, :w]
    img += grain * rng.normal(0, 1, (h, w)).astype(np.float32)
    return Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8), "L")


def write_tiny_llm(folder: Path, corpus: list[str], hidden: int = 64, layers: int = 2) -> Path:
    """A random-init Llama + a BPE tokenizer trained on `corpus`, saved as a local HF folder.

    Initialised with std 0.3 rather than HF's 0.02: at 0.02 a tiny random LM's logits are near-uniform
    whatever its input, so no visual prefix could lower the loss of the frozen LM and training tests
    could not tell learning from noise."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r2g.demo.tiny_lm import train_tokenizer

    tokenizer = train_tokenizer(corpus, vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
