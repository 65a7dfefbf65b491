"""Shared fixtures: one torch thread per test module, a tiny raw dataset in the R2Gen layout, and the training
assets (shards + a tiny Llama), written on the fly (builders in r2g.demo.toys)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2g.data.shard import ShardOptions, shard_dataset
from r2g.demo.run import pinned_threads
from r2g.demo.toys import write_raw_dataset, write_tiny_llm


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops run fastest on one thread, and two pytest workers on two cores must not spin-wait on each other."""
    with pinned_threads(1):
        yield


@pytest.fixture
def raw_dataset(tmp_path) -> Path:
    return write_raw_dataset(tmp_path / "raw")


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """Shards of 34 tiny studies and a tiny Llama whose tokenizer knows their reports, shared read-only by the
    training, checkpoint and evaluation tests."""
    root = tmp_path_factory.mktemp("train")
    raw = write_raw_dataset(root / "raw", per_split=(24, 6, 4), size=64)
    shard_dataset(raw, raw.parent / "images", root / "shards", ShardOptions("iu_xray", shard_size=8))
    corpus = [e["report"] for e in json.loads(raw.read_text())["train"]] * 5
    write_tiny_llm(root / "llm", corpus)
    return root
