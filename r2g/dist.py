"""Process-group setup that works the same under `deepspeed`, `torchrun`, `srun`, `mpirun` and plain `python`."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager

import torch

from r2g.errors import AgreedError, R2GError
from r2g.launch import detect_launch


def free_port() -> int:
    """A TCP port free on this machine now, for a rendezvous (the OS picks it, so concurrent launches differ)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). The ranks come from the launcher (r2g.launch: deepspeed, torchrun, srun or
    mpirun); a plain `python cli/train.py` becomes a world of one, and a launch r2g cannot map is refused."""
    import deepspeed

    launch = detect_launch(os.environ, free_port)
    os.environ.update(launch.torch_env())  # torch's env:// rendezvous reads these
    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if cuda:
        # srun --gpus-per-task=1 shows each task only its own GPU (index 0), whatever its local rank.
        local = launch.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def close_distributed(failed: bool = False) -> None:
    """Tear the process group down at the end of a command. Left to interpreter exit, gloo's worker threads can be
    destroyed while still joinable and abort the process ("terminate called without an active exception",
    pytorch#190489): a finished run would exit with SIGABRT, a failed one with it instead of its own status. After
    a failure only a world of one, or a failure every rank raised together (AgreedError): otherwise another rank
    may still wait in a collective, and destroying the group under it can hang."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if not failed or torch.distributed.get_world_size() == 1:
        torch.distributed.destroy_process_group()


def auto_dtype(device: torch.device) -> torch.dtype:
    """The compute dtype when none is asked for: bf16 on CUDA, fp32 elsewhere (bf16 on this CPU kind is
    ~10x slower than fp32)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def all_max(value: int) -> int:
    t = torch.tensor([value], dtype=torch.long)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def _world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def raise_together(error: R2GError | None) -> None:
    """Every rank calls this at the same point with the error it met before it (None: none). When any rank met
    one, every rank raises the same R2GError (the lowest such rank's, naming it), so that no rank is left waiting
    in a collective the failed one will never enter (until NCCL's 30-minute timeout). A world of one raises its
    own error as it is. Costs one small all-reduce when no rank failed."""
    if _world() == 1:
        if error is not None:
            raise error
        return
    if not all_max(int(error is not None)):
        return
    messages = gather_objects(None if error is None else str(error))
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    raise AgreedError(f"on rank {rank}: {message}") from None


@contextmanager
def fail_together(together: bool = True):
    """Run a block of local work (no collectives inside) on every rank; an R2GError in it on any rank becomes
    the same R2GError on every rank at the block's end (`raise_together`). `together=False`: plain."""
    if not together:
        yield
        return
    error = None
    try:
        yield
    except R2GError as e:
        error = e
    raise_together(error)
