"""When, where and at which code a bench figure was measured, all read at run time.

Every bench prints `header(record())` before it measures and stores the record in its JSON under "provenance":
the date and time (UTC), the git commit and whether the checkout differed from it (uncommitted or untracked files), the CPU model, cores and
memory, the GPUs (name and count) when there are any, the load and free memory at the start (shared machines),
and the versions of Python, torch, deepspeed and transformers. A figure copied into bench/RESULTS.md carries the
header line with it, so the next run can be compared with it.

Work folders default to `work_dir(name)` (runs/NAME inside the checkout; /runs/ is gitignored), and large writes
go through `announce_write`, which says the size and the folder first and stops if the disk cannot hold them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "deepspeed", "transformers")
GIB = 2**30


def record() -> dict:
    """This run's provenance (see the module docstring)."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git": git_state(),
        "machine": machine(),
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
    }


def git_state() -> dict:
    """{"commit": full sha, "dirty": the checkout differs from it}, or commit None and why."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))  # untracked files count: a bench may import them
    except (OSError, subprocess.SubprocessError) as e:  # no git, or not a checkout (an installed copy)
        return {"commit": None, "dirty": None, "why": f"{type(e).__name__}: {str(e)[:200]}"}
    return {"commit": commit, "dirty": dirty}


def machine() -> dict:
    mem = _meminfo()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem["MemTotal"] / GIB, 1) if "MemTotal" in mem else None,
        "memory_available_gib": round(mem["MemAvailable"] / GIB, 1) if "MemAvailable" in mem else None,
        "load_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpus": gpus(),
        "platform": platform.platform(),
    }


def gpus() -> list[str]:
    """Names of the GPUs this process sees: torch's view when the bench has imported it (it honours
    CUDA_VISIBLE_DEVICES), else nvidia-smi's, so a bench that never loads torch need not load it for this."""
    torch = sys.modules.get("torch")
    if torch is not None:
        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def header(rec: dict) -> str:
    """One line for the console and for bench/RESULTS.md, e.g. `2026-12-03 13:20 UTC · commit fab6ec7 · AMD EPYC,
    2 cores, 23.4 GiB · no GPU · Python 3.11.2, torch 2.14.1, deepspeed 0.19.8, transformers 5.24.0`."""
    when = datetime.datetime.fromisoformat(rec["date"]).strftime("%Y-%m-%d %H:%M UTC")
    g = rec["git"]
    commit = f"commit {g['commit'][:7]}" + (" + uncommitted changes" if g["dirty"] else "") if g["commit"] \
        else "commit unknown (not a git checkout)"
    m = rec["machine"]
    cores = f"{m['cores']} cores" + (f" ({m['cores_usable']} usable)" if m["cores_usable"] != m["cores"] else "")
    names = m["gpus"]
    gpu = "no GPU" if not names else ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))
    versions = ", ".join(f"{'Python' if k == 'python' else k} {v}" for k, v in rec["versions"].items())
    return (f"{when} · {commit} · {m['cpu']}, {cores}, {m['memory_gib']} GiB · {gpu} · load {m['load_1m']}, "
            f"{m['memory_available_gib']} GiB free · {versions}")


def start() -> dict:
    """This run's record, printed as the bench's first line."""
    rec = record()
    print(f"[bench] {header(rec)}", flush=True)
    return rec


def write_json(path: str | Path, result, rec: dict) -> None:
    """`result` (a dict, or a list of rows) with the provenance record, as JSON."""
    body = {"provenance": rec, **result} if isinstance(result, dict) else {"provenance": rec, "rows": result}
    Path(path).write_text(json.dumps(body, indent=2) + "\n")


def work_dir(name: str) -> Path:
    """A bench's default work folder: runs/NAME in this checkout (gitignored)."""
    return ROOT / "runs" / name


def announce_write(what: str, nbytes: int, folder: Path, flag: str = "--work") -> None:
    """Say what is about to be written, how much and where, before writing; stop if the disk has not room."""
    probe = Path(folder).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    print(f"[bench] writing {what}: {nbytes / 1e9:.2f} GB to {folder} ({free / 1e9:.1f} GB free there)", flush=True)
    if nbytes > free:
        raise SystemExit(f"{folder}: {what} needs {nbytes / 1e9:.2f} GB, only {free / 1e9:.1f} GB free; "
                         f"choose another folder with {flag}")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (Linux); empty elsewhere."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in lines if ":" in line)}
