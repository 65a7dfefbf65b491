"""Start several processes that must meet (the ranks of one world) and wait for all of them, under a timeout so
that a rank waiting for a peer that never comes fails the test instead of hanging it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def run_together(commands: list[tuple[list[str], dict]], logs: Path, cwd: Path, timeout: int = 300) -> list[tuple[int, str]]:
    """(exit status, output) of each (command, environment), started side by side. Output goes to files in `logs`,
    not pipes: a full pipe that nobody reads would block its process, and every rank waiting on it."""
    logs.mkdir(parents=True, exist_ok=True)
    paths = [logs / f"process{i}.log" for i in range(len(commands))]
    files = [p.open("w") for p in paths]
    procs = [subprocess.Popen(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
             for (cmd, env), f in zip(commands, files)]
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p, f in zip(procs, files):
            if p.poll() is None:
                p.kill()
                p.wait()
            f.close()
    return [(p.returncode, path.read_text()) for p, path in zip(procs, paths)]
