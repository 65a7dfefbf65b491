"""Whether the run's latest checkpoint can be resumed by this launch's number of processes.

DeepSpeed saves ZeRO's optimizer state as one partition per data-parallel rank and cannot load it on another
count ("Automatic adjustment of ZeRO's optimizer state partitioning with a new world size is not currently
supported", as a traceback deep in load_checkpoint). This check says so first, naming both counts and the fix."""

from __future__ import annotations

from pathlib import Path

from r2g.errors import R2GError


def saved_world(tag_folder: Path) -> int | None:
    """How many data-parallel ranks wrote the checkpoint in `tag_folder` (one optimizer partition each; the
    file name is DeepSpeed's, `bf16_` prefixed for its bf16 optimizer); None when it holds none."""
    return len(list(tag_folder.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"))) or None


def check_resume_world(out: Path, world: int, per_rank_batch: int) -> None:
    """Raise when `out`'s latest checkpoint was written by another number of processes than `world`."""
    latest = out / "checkpoints" / "latest"
    if not latest.is_file():
        return
    tag = latest.read_text().strip()
    saved = saved_world(out / "checkpoints" / tag)
    if saved is None or saved == world:
        return
    raise R2GError(
        f"{out / 'checkpoints' / tag} was written by {saved} process(es), this launch has {world} (global batch "
        f"{world * per_rank_batch} = {world} × --micro-batch × --grad-accum): r2g resumes a run only on the number "
        f"of processes that saved it, as ZeRO's optimizer state is partitioned per process. Relaunch --resume with "
        f"{saved} process(es): {saved} GPUs for the deepspeed launcher or torchrun, {saved} tasks for srun"
    )
