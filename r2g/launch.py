"""Which launcher started this process, read from its environment: torch's own variables (deepspeed, torchrun),
SLURM's `srun`, or an MPI launcher (Open MPI, MPICH / Intel MPI, MVAPICH). Pure functions of the environment,
so every branch is testable without the launcher; r2g.dist turns the result into a process group.

A process that sees signs of a multi-task launch it cannot map refuses (R2GError) rather than becoming a
world of one: eight independent runs writing into one --out are worse than no run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from r2g.errors import R2GError

TORCH_DEFAULT_PORT = 29500  # torch.distributed's and DeepSpeed's default rendezvous port


@dataclass(frozen=True)
class Launch:
    kind: str  # "torch" (deepspeed/torchrun), "slurm", "openmpi", "mpich", "mvapich" or "single"
    rank: int
    local_rank: int
    world: int
    master_addr: str
    master_port: int

    def torch_env(self) -> dict[str, str]:
        """The variables torch.distributed's env:// rendezvous reads."""
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


def detect_launch(env: Mapping[str, str], free_port) -> Launch:
    """The launch `env` describes. `free_port()` gives a port for a world of one (nothing else needs to agree
    on it). A launcher's own RANK/WORLD_SIZE always win: `srun torchrun …` and deepspeed's launcher inside a
    SLURM allocation set them, and there the SLURM task is a node agent, not a rank."""
    if "RANK" in env:
        return _torch(env)
    if "WORLD_SIZE" in env and _int(env, "WORLD_SIZE") > 1:
        raise R2GError(f"WORLD_SIZE={env['WORLD_SIZE']} is set but RANK is not: launch with torchrun or deepspeed, "
                       "which set both, or unset WORLD_SIZE for a single process")
    if "SLURM_PROCID" in env and _slurm_tasks(env) > 1:
        return _slurm(env)
    for kind, (rank, size, local) in MPI_VARIABLES.items():
        if rank in env and _int(env, size) > 1:
            return _mpi(env, kind, rank, size, local)
    for name, launcher in UNMAPPED.items():
        if name in env:
            raise R2GError(f"{name} is set: this looks like a {launcher} launch, which r2g cannot map to ranks. "
                           "Start the ranks with torchrun or deepspeed (one agent per node), or set RANK, "
                           "LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for each process yourself")
    return Launch("single", 0, 0, 1, "127.0.0.1", int(env.get("MASTER_PORT") or free_port()))


# (rank, world size, local rank) per MPI flavour. MPICH's Hydra and Intel MPI export PMI_*, and MPI_LOCALRANKID
# for the rank on its node; srun --mpi=pmi2 also exports PMI_* but is caught as SLURM first.
MPI_VARIABLES = {
    "openmpi": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    "mpich": ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    "mvapich": ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
}
# Launchers whose rank variables say a process is one of several, but not enough to place it.
UNMAPPED = {"PMIX_RANK": "PMIx (e.g. prterun, srun --mpi=pmix without SLURM_PROCID)",
            "JSM_NAMESPACE_RANK": "LSF jsrun"}
# The variables each branch reads: a test that simulates one launch clears all of them first.
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                    "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_STEP_ID", "SLURM_JOB_ID", "SLURM_NODELIST",
                    "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST",
                    *(v for names in MPI_VARIABLES.values() for v in names), "OMPI_COMM_WORLD_LOCAL_SIZE",
                    "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE", *UNMAPPED)


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise R2GError(f"environment variable {name}={raw!r} is not an integer") from None


def _check(kind: str, rank: int, local_rank: int, world: int) -> None:
    if not (0 <= rank < world and local_rank >= 0):
        raise R2GError(f"{kind} launch: rank {rank}, local rank {local_rank} of a world of {world} do not fit")


def _torch(env: Mapping[str, str]) -> Launch:
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE", 1)
    local = _int(env, "LOCAL_RANK", 0)
    _check("torch", rank, local, world)
    # Launchers set MASTER_ADDR/PORT with RANK; a hand-set RANK without them gets torch's defaults.
    return Launch("torch", rank, local, world, env.get("MASTER_ADDR", "127.0.0.1"),
                  _int(env, "MASTER_PORT", TORCH_DEFAULT_PORT))


def _slurm_tasks(env: Mapping[str, str]) -> int:
    """The task count of this job step. srun sets SLURM_NTASKS (and SLURM_STEP_NUM_TASKS) to its own -n."""
    if "SLURM_NTASKS" in env:
        return _int(env, "SLURM_NTASKS")
    return _int(env, "SLURM_STEP_NUM_TASKS", 1)


def _slurm(env: Mapping[str, str]) -> Launch:
    world = _slurm_tasks(env)
    # A batch script (or a salloc shell) sees its allocation's SLURM_NTASKS and SLURM_PROCID=0 too, but it is
    # one process, not task 0 of many: only srun starts job steps, and only srun's tasks have SLURM_STEP_ID.
    if "SLURM_STEP_ID" not in env:
        raise R2GError(f"SLURM_NTASKS={world} but this process was not started by srun: run one task per GPU with "
                       "`srun python cli/train.py …` (or one `srun torchrun …` per node), not python directly in "
                       "the batch script")
    rank, local = _int(env, "SLURM_PROCID"), _int(env, "SLURM_LOCALID", 0)
    _check("SLURM", rank, local, world)
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if env.get("MASTER_ADDR"):
        addr = env["MASTER_ADDR"]
    elif nodes:
        addr = first_host(nodes)  # srun places task 0 on the step's first node, with any --distribution
    else:
        raise R2GError("SLURM launch without SLURM_NODELIST: set MASTER_ADDR to the host of task 0")
    # Every task must agree on the port without talking first: derive it from the job id (as Lightning does),
    # so two jobs sharing a node do not collide; MASTER_PORT overrides.
    port = _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else 15000 + _int(env, "SLURM_JOB_ID", 0) % 10000
    return Launch("slurm", rank, local, world, addr, port)


def _mpi(env: Mapping[str, str], kind: str, rank_var: str, size_var: str, local_var: str) -> Launch:
    rank, world = _int(env, rank_var), _int(env, size_var)
    local_sizes = {"openmpi": "OMPI_COMM_WORLD_LOCAL_SIZE", "mpich": "MPI_LOCALNRANKS",
                   "mvapich": "MV2_COMM_WORLD_LOCAL_SIZE"}
    one_node = _int(env, local_sizes[kind], 0) == world
    if local_var in env:
        local = _int(env, local_var)
    elif one_node:
        local = rank
    else:
        raise R2GError(f"{kind} launch: {rank_var} is set but not {local_var}, so the GPU of this rank is unknown; "
                       f"set LOCAL_RANK for each process, or launch with torchrun")
    _check(kind, rank, local, world)
    if env.get("MASTER_ADDR"):
        addr = env["MASTER_ADDR"]
    elif one_node:
        addr = "127.0.0.1"
    else:
        # MPI exports no host of rank 0; DeepSpeed asks mpi4py for it. Saying it once on the command line is
        # simpler than a dependency for one string.
        raise R2GError(f"{kind} launch across nodes: set MASTER_ADDR to the host of rank 0 "
                       "(e.g. `mpirun -x MASTER_ADDR=node1 -x MASTER_PORT=29500 …`)")
    port = _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else TORCH_DEFAULT_PORT
    return Launch(kind, rank, local, world, addr, port)


_HOST = re.compile(r"([^,\[]*)(?:\[([^\]]*)\])?")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: 'node[01-04,07],gpu5' → 'node01', 'rack[2-3]-n[8-9]' → 'rack2-n8'.
    Each bracket expands to its first value (zero padding kept), as `scontrol show hostnames` would list first."""
    host, rest = "", nodelist.strip()
    while rest and not rest.startswith(","):
        m = _HOST.match(rest)
        if not m.group(0):  # an unclosed bracket
            raise R2GError(f"SLURM_NODELIST={nodelist!r} is not a hostlist; set MASTER_ADDR")
        prefix, ranges = m.group(1), m.group(2)
        host += prefix
        if ranges is not None:
            first = ranges.split(",")[0].split("-")[0].strip()
            if not first:
                raise R2GError(f"SLURM_NODELIST={nodelist!r}: empty range; set MASTER_ADDR")
            host += first
        rest = rest[m.end():]
    if not host:
        raise R2GError(f"SLURM_NODELIST={nodelist!r} names no host; set MASTER_ADDR")
    return host
