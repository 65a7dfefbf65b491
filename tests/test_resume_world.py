"""--resume on another number of processes than the checkpoint's: one R2GError naming both counts and the fix,
before DeepSpeed's traceback (r2g/train/resume_world.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from r2g.errors import R2GError
from r2g.train.resume_world import check_resume_world, saved_world


def _checkpoint(out: Path, ranks: int, prefix: str = "") -> Path:
    tag = out / "checkpoints" / "step00000006"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    for r in range(ranks):
        (tag / f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    (out / "checkpoints" / "latest").write_text("step00000006")
    return tag


@pytest.mark.parametrize("prefix", ["", "bf16_"])
def test_the_saved_world_is_the_count_of_optimizer_partitions(tmp_path, prefix: str):
    assert saved_world(_checkpoint(tmp_path, 3, prefix)) == 3
    assert saved_world(tmp_path) is None


def test_resuming_on_another_count_names_both_and_the_fix(tmp_path):
    _checkpoint(tmp_path, 2)
    check_resume_world(tmp_path, 2, 4)  # the same count: nothing to say
    with pytest.raises(R2GError) as error:
        check_resume_world(tmp_path, 1, 4)
    message = str(error.value)
    assert "step00000006 was written by 2 process(es), this launch has 1 (global batch 4" in message
    assert "Relaunch --resume with 2 process(es)" in message


def test_nothing_to_check_without_a_checkpoint(tmp_path):
    check_resume_world(tmp_path, 3, 4)
    (tmp_path / "checkpoints").mkdir()
    check_resume_world(tmp_path, 3, 4)
