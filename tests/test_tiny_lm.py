"""The demo's small LM: trains on report text in seconds and loads through load_llm like any HF folder."""

from __future__ import annotations

import random

import pytest
import torch

from r2g.model.llm import load_llm
from r2g.model.tiny_lm import train_tiny_lm

TINY = dict(vocab_size=400, hidden=32, layers=1, heads=2, steps=40, seq_len=32, batch_size=8, lr=3e-3)


def reports(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    parts = [
        ["the heart is normal in size .", "mild cardiomegaly .", "the cardiomediastinal silhouette is normal ."],
        ["the lungs are clear .", "no focal consolidation .", "mild bibasilar atelectasis ."],
        ["no pleural effusion or pneumothorax .", "small left pleural effusion ."],
        ["no acute cardiopulmonary process .", "findings concerning for pneumonia ."],
    ]
    return [" ".join(rng.choice(p) for p in parts) for _ in range(n)]


def test_tiny_lm_trains_saves_and_loads(tmp_path):
    corpus = reports(200)
    result = train_tiny_lm(corpus, tmp_path / "lm", seed=0, **TINY)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (tmp_path / "lm").iterdir()
    }
    assert result["loss_final"] < result["loss_init"] - 1.0
    assert result["ppl_final"] < result["ppl_init"]

    model, tokenizer = load_llm(tmp_path / "lm")
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token)
    assert specials == ("<s>", "</s>", "<pad>", "<unk>")
    assert model.config.eos_token_id == tokenizer.eos_token_id and model.config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer(corpus[0])["input_ids"]
    assert ids[0] == tokenizer.bos_token_id  # like Llama's tokenizer
    assert tokenizer.decode(ids, skip_special_tokens=True) == corpus[0]

    # The saved weights are the trained ones: the held-out loss is reproduced after reloading.
    x = torch.tensor([[tokenizer.bos_token_id, *tokenizer(corpus[1], add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        assert model(input_ids=x, labels=x).loss.item() < result["loss_init"] - 1.0

    again = train_tiny_lm(corpus, tmp_path / "again", seed=0, **TINY)
    assert again["losses"] == result["losses"]  # deterministic for a seed
