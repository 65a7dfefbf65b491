"""Launch detection (r2g/launch.py, r2g/dist.py): SLURM's srun and MPI launchers map to one world of ranks, a
launcher's own RANK wins, and a multi-task launch r2g cannot map is refused instead of becoming a world of one.
The launchers themselves are simulated: processes started by hand with the variables each one sets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from r2g.dist import free_port
from r2g.errors import R2GError
from r2g.launch import LAUNCH_VARIABLES, Launch, detect_launch, first_host

from .together import run_together

ROOT = Path(__file__).resolve().parents[1]


def port() -> int:
    return 4242  # what free_port would give a world of one


def srun_task(procid: int, ntasks: int = 2, **extra: str) -> dict:
    """What srun exports to task `procid` of a step on two nodes, `ntasks` // 2 tasks per node."""
    per_node = max(1, ntasks // 2)
    return {"SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks), "SLURM_LOCALID": str(procid % per_node),
            "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "123456", "SLURM_NODELIST": "gpu-a[007-008]",
            "SLURM_JOB_NODELIST": "gpu-a[007-008],gpu-b1", **extra}


@pytest.mark.parametrize("nodelist, first", [
    ("node[01-04,07]", "node01"), ("node[7,01-04]", "node7"), ("gpu5,node[1-2]", "gpu5"), ("single", "single"),
    ("rack[2-3]-n[08-09],x", "rack2-n08"), ("a1.cluster.org", "a1.cluster.org"), ("n[0003]", "n0003"),
])
def test_first_host_of_a_compressed_hostlist(nodelist: str, first: str):
    assert first_host(nodelist) == first


@pytest.mark.parametrize("nodelist", ["node[01-04", "", "node[]"])
def test_a_hostlist_that_does_not_parse_asks_for_master_addr(nodelist: str):
    with pytest.raises(R2GError, match="MASTER_ADDR"):
        first_host(nodelist)


def test_srun_tasks_map_to_ranks_on_the_first_node_and_a_port_from_the_job_id():
    got = [detect_launch(srun_task(r, ntasks=16), port) for r in range(16)]
    assert [(g.rank, g.local_rank, g.world) for g in got] == [(r, r % 8, 16) for r in range(16)]
    assert {(g.kind, g.master_addr, g.master_port) for g in got} == {("slurm", "gpu-a007", 15000 + 3456)}
    # the step's own node list, when srun ran on part of the allocation; MASTER_ADDR/PORT override
    step = detect_launch(srun_task(1, SLURM_STEP_NODELIST="gpu-b[3-4]"), port)
    assert step.master_addr == "gpu-b3"
    mine = detect_launch(srun_task(1, MASTER_ADDR="10.0.0.9", MASTER_PORT="31000"), port)
    assert (mine.master_addr, mine.master_port, mine.rank) == ("10.0.0.9", 31000, 1)


def test_a_launchers_own_rank_wins_over_slurm_and_mpi():
    """`srun torchrun …`, or deepspeed's launcher in an allocation: the SLURM task is a node agent."""
    env = srun_task(1, ntasks=2) | {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2",
                                    "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "n1",
                                    "MASTER_PORT": "29511"}
    assert detect_launch(env, port) == Launch("torch", 5, 1, 8, "n1", 29511)


@pytest.mark.parametrize("env, want", [
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "3",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, Launch("openmpi", 3, 3, 4, "127.0.0.1", 29500)),
    ({"OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "8", "MASTER_ADDR": "n1", "MASTER_PORT": "30000"},
     Launch("openmpi", 9, 1, 16, "n1", 30000)),
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
     Launch("mpich", 1, 1, 2, "127.0.0.1", 29500)),
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALNRANKS": "2"}, Launch("mpich", 1, 1, 2, "127.0.0.1", 29500)),
    ({"MV2_COMM_WORLD_RANK": "0", "MV2_COMM_WORLD_SIZE": "2", "MV2_COMM_WORLD_LOCAL_RANK": "0",
      "MV2_COMM_WORLD_LOCAL_SIZE": "2"}, Launch("mvapich", 0, 0, 2, "127.0.0.1", 29500)),
    # srun --mpi=pmi2 exports PMI_* too: SLURM's variables place the task
    (srun_task(1) | {"PMI_RANK": "1", "PMI_SIZE": "2"}, Launch("slurm", 1, 0, 2, "gpu-a007", 18456)),
    ({}, Launch("single", 0, 0, 1, "127.0.0.1", 4242)),
    # a batch script of one task, and a world of one under mpirun, are single processes
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, Launch("single", 0, 0, 1, "127.0.0.1", 4242)),
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1"}, Launch("single", 0, 0, 1, "127.0.0.1", 4242)),
])
def test_mpi_and_single_launches(env: dict, want: Launch):
    assert detect_launch(env, port) == want


@pytest.mark.parametrize("env, says", [
    # python straight in a batch script of 8 tasks: no srun step, so it is not task 0 of 8
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "7", "SLURM_NODELIST": "n[1-2]"},
     "SLURM_NTASKS=8 but this process was not started by srun"),
    ({"OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, "openmpi launch across nodes: set MASTER_ADDR"),
    ({"PMI_RANK": "3", "PMI_SIZE": "16"}, "PMI_RANK is set but not MPI_LOCALRANKID"),
    ({"PMIX_RANK": "3"}, "PMIX_RANK is set: this looks like a PMIx"),
    ({"JSM_NAMESPACE_RANK": "0", "JSM_NAMESPACE_SIZE": "6"}, "LSF jsrun"),
    ({"WORLD_SIZE": "4"}, "WORLD_SIZE=4 is set but RANK is not"),
    (srun_task(0, SLURM_NTASKS="two"), "SLURM_NTASKS='two' is not an integer"),
    (srun_task(2), "SLURM launch: rank 2, local rank 0 of a world of 2 do not fit"),
])
def test_a_multi_task_launch_that_cannot_be_mapped_is_refused(env: dict, says: str):
    with pytest.raises(R2GError) as error:
        detect_launch(env, port)
    assert says in str(error.value)


def _simulated(variables: list[dict], logs: Path) -> list[tuple[int, str]]:
    """One process per dict of variables, each opening the process group as a command does and summing its
    rank + 1 over the world; no launcher in between. (exit status, output) of each."""
    script = ("import torch\nfrom r2g.dist import init_distributed, close_distributed\n"
              "rank, world, device = init_distributed()\n"
              "t = torch.tensor([rank + 1.0])\ntorch.distributed.all_reduce(t)\n"
              "print(f'rank {rank} of {world} sum {int(t.item())}', flush=True)\nclose_distributed()\n")
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    return run_together([([sys.executable, "-c", script], base | v) for v in variables], logs, ROOT, timeout=120)


@pytest.mark.parametrize("launcher", ["slurm", "openmpi", "mpich"])
def test_two_processes_with_launcher_variables_form_one_world_of_two(launcher: str, tmp_path):
    rendezvous = {"MASTER_PORT": str(free_port())}  # a fixed derived port could meet another test's
    if launcher == "slurm":
        variables = [srun_task(r, SLURM_NODELIST="localhost") | rendezvous for r in range(2)]
    elif launcher == "openmpi":
        variables = [{"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": str(r),
                      "OMPI_COMM_WORLD_LOCAL_SIZE": "2"} | rendezvous for r in range(2)]
    else:
        variables = [{"PMI_RANK": str(r), "PMI_SIZE": "2", "MPI_LOCALRANKID": str(r), "MPI_LOCALNRANKS": "2"} | rendezvous
                     for r in range(2)]
    for rank, (status, log) in enumerate(_simulated(variables, tmp_path)):
        assert status == 0 and f"rank {rank} of 2 sum 3" in log, log[-3000:]


def test_python_in_a_batch_script_of_two_tasks_fails_naming_srun_instead_of_training_alone(tmp_path):
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7", "SLURM_NODELIST": "localhost"}
    ((status, log),) = _simulated([batch], tmp_path)
    assert status != 0 and "not started by srun" in log


@pytest.mark.slow
def test_two_srun_tasks_train_one_run_together(assets, tmp_path):
    """`srun --ntasks 2 python cli/train.py …` without srun: the two tasks split the epoch (24 studies / (2 × 4)
    = 3 steps) and rank 0 alone writes the run."""
    from .test_train import _args, _env, losses

    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "cli" / "train.py"),
           *_args(assets, out, "--ds", "ds_configs/zero2.json", "--max-steps", "2", "--val-samples", "-1")]
    base = {k: v for k, v in _env().items() if k not in LAUNCH_VARIABLES}
    port_ = str(free_port())
    done = run_together([(cmd, base | srun_task(r, SLURM_NODELIST="localhost", MASTER_PORT=port_)) for r in range(2)],
                        tmp_path / "logs", ROOT)
    logs = [log for _, log in done]
    assert [rc for rc, _ in done] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "rank 0 of 2" in logs[0] and "3 steps/epoch" in logs[0]
    assert "rank 0 of 2" not in logs[1]  # rank 1 does not log
    assert sorted(losses(out)) == [1, 2] and (out / "trainable.safetensors").is_file()
