"""Memory readings shared by the benches and the tests that check the planner's formulas.

- `saved_tensor_bytes`: what autograd keeps for the backward pass (exact, through saved-tensor hooks);
- `proc_status` / `reset_peak`: a Linux process's resident sizes and its peak (VmHWM), which
  /proc/self/clear_refs resets to the current resident size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


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


def proc_status(*fields: str, pid: int | str = "self") -> tuple[int, ...]:
    """The given kB fields of /proc/<pid>/status (VmRSS, RssAnon, VmHWM, ...) in bytes, in that order."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    values = dict(line.split(":", 1) for line in lines if ":" in line)
    return tuple(int(values[name].split()[0]) * 1024 for name in fields)


def reset_peak() -> None:
    """Set this process's peak resident size (VmHWM) to its current resident size."""
    Path("/proc/self/clear_refs").write_text("5")
