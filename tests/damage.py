"""Same-size damage to a shard's tar file, of the kinds a bad copy or disk does, for the tests of what the
shard readers make of it (the sizes in the manifest cannot see any of these)."""

from __future__ import annotations

import tarfile
from pathlib import Path


def _member(path: Path, first_of: str) -> tarfile.TarInfo:
    """The first member whose name starts with `first_of` (a sample key and dot, or a full member name)."""
    with tarfile.open(path) as tar:
        return next(m for m in tar.getmembers() if m.name.startswith(first_of))


def _xor_byte(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _overwrite(path: Path, offset: int, new: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(new)] = new
    path.write_bytes(bytes(data))


def break_header(path: Path, key: str) -> None:
    """Corrupt the header of sample `key`'s first member: tarfile quietly ends the archive there, so the shard
    ends early and only a per-shard count as it streams can tell."""
    _xor_byte(path, _member(path, f"{key}.").offset + 3, 0xFF)


def spoil_image(path: Path, member: str) -> None:
    """Overwrite the PNG signature of `member` (e.g. s0003.0.png): the archive reads, the image does not decode."""
    _overwrite(path, _member(path, member).offset_data, b"garbage!")


def flip_bit(path: Path, member: str) -> None:
    """Flip one bit in the middle of `member`'s data: everything still reads; only a checksum can tell."""
    info = _member(path, member)
    _xor_byte(path, info.offset_data + info.size // 2, 0x01)
