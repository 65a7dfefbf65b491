"""Process-group teardown (r2g/dist.py, r2g/cli.py main): a command that succeeded destroys its group, so gloo's
threads cannot abort the process at interpreter exit; one that failed leaves it, as destroying can hang."""

from __future__ import annotations

import pytest
import torch

import r2g.cli
from r2g.dist import close_distributed, init_distributed


@pytest.fixture
def world_of_one(monkeypatch):
    """`r2g.cli.app` replaced by a command that opens a one-process gloo group and exits with the given code."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)  # init_distributed sets them: undone after the test
    assert not torch.distributed.is_initialized()

    def command_exiting_with(code: int):
        def app():
            init_distributed()
            assert torch.distributed.is_initialized()
            raise SystemExit(code)  # how Click ends every command
        monkeypatch.setattr(r2g.cli, "app", app)

    yield command_exiting_with
    close_distributed()


@pytest.mark.parametrize("code, closed", [(0, True), (1, False)])
def test_main_closes_the_process_group_only_after_success(world_of_one, code: int, closed: bool):
    world_of_one(code)
    with pytest.raises(SystemExit) as exit_:
        r2g.cli.main()
    assert exit_.value.code == code
    assert torch.distributed.is_initialized() is not closed
