"""Process-group teardown (r2g/dist.py, r2g/cli.py main): a command destroys its group before the interpreter
exits, so gloo's threads cannot abort the process; after a failure only a world of one, as destroying a larger
one can hang."""

from __future__ import annotations

import pytest
import torch

import r2g.cli
from r2g.dist import close_distributed, fail_together, init_distributed
from r2g.errors import AgreedError, R2GError


@pytest.fixture
def command(monkeypatch):
    """`command(end)`: `r2g.cli.app` replaced by a command that opens a one-process gloo group and then ends with
    `end` (an exception); the group is torn down after the test whatever main did."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)  # init_distributed sets them: undone after the test
    assert not torch.distributed.is_initialized()

    def ending_with(end: BaseException):
        def app():
            init_distributed()
            assert torch.distributed.is_initialized()
            raise end
        monkeypatch.setattr(r2g.cli, "app", app)

    yield ending_with
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("end, code", [(SystemExit(0), 0), (SystemExit(1), 1), (R2GError("bad input"), 2)])
def test_main_closes_a_world_of_one_however_the_command_ends(command, end, code: int):
    command(end)  # SystemExit(0): how Click ends a command that succeeded
    with pytest.raises(SystemExit) as exit_:
        r2g.cli.main()
    assert exit_.value.code == code and not torch.distributed.is_initialized()


def test_after_a_failure_a_larger_world_is_left_alone(command, monkeypatch):
    """Another rank may still wait in a collective: destroying the group under it could hang."""
    command(SystemExit(1))
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    with pytest.raises(SystemExit):
        r2g.cli.main()
    assert torch.distributed.is_initialized()
    close_distributed()  # success tears down any world
    assert not torch.distributed.is_initialized()


def test_after_an_agreed_failure_a_larger_world_is_closed(command, monkeypatch):
    """Every rank raised it at the same point (raise_together): none waits in a collective, so the group goes
    and the process exits with its own status rather than gloo's abort."""
    command(AgreedError("on rank 1: bad sample"))
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    with pytest.raises(SystemExit) as exit_:
        r2g.cli.main()
    assert exit_.value.code == 2 and not torch.distributed.is_initialized()


def test_in_a_world_of_one_fail_together_raises_the_error_as_it_is():
    with pytest.raises(R2GError, match="^bad shard$") as raised:
        with fail_together():
            raise R2GError("bad shard")
    assert not isinstance(raised.value, AgreedError)
    with fail_together():
        pass  # no error, nothing raised
