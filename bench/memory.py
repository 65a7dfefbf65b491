"""Memory readings shared by the benches and the tests that check the planner's formulas.

- `saved_tensor_bytes`: what autograd keeps for the backward pass (exact, through saved-tensor hooks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def saved_tensor_bytes(exclude: Iterable) -> Iterator[Callable[[], int]]:
    """Counts the distinct storages autograd saves for backward inside the block; yields a function giving their
    bytes so far. Storages of the tensors in `exclude` (parameters, buffers) and their views are left out."""
    import torch

    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield lambda: sum(seen.values())
