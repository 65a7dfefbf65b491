"""Shared fixtures: a tiny raw dataset in the R2Gen layout, written on the fly (builders in r2g.demo.toys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from r2g.demo.toys import TINY_VISION_KWARGS, write_raw_dataset, write_tiny_llm  # noqa: F401  (the tests import them from here)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops run fastest on one thread, and two pytest workers on two cores must not spin-wait on each other."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def raw_dataset(tmp_path) -> Path:
    return write_raw_dataset(tmp_path / "raw")
