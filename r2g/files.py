"""Files that a crash (kill -9, pre-emption, power loss) leaves whole: the old version or the new one, never a part."""

from __future__ import annotations

import os
from pathlib import Path


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a folder too: its entries (a rename) reach the disk only this way
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: Path, dest: Path) -> None:
    """Put the finished file `tmp` in place of `dest` in one step: a crash leaves the old file or the new one."""
    fsync(tmp)
    os.replace(tmp, dest)
    fsync(dest.parent)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    replace(tmp, path)
