"""Read and check an R2Gen-format `annotation.json`.

Layout: `{"train": [entry, ...], "val": [...], "test": [...]}` with each entry
`{"id": str, "report": str, "image_path": [str, ...], "split": str, "labels"?: {label: 1|0|-1|null}}`.

Problems with the file as a whole (not JSON, no splits) raise one R2GError naming the key path. Problems
with single entries (malformed fields, empty report) are returned as `BadSample`s so the caller can stop
with a list or skip them with a count, never drop them silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from r2g.errors import R2GError
from r2g.labels import CHEXPERT_LABELS

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Study:
    id: str
    split: str
    report: str
    image_path: tuple[str, ...]
    labels: dict[str, int | None] | None = None


@dataclass(frozen=True)
class BadSample:
    split: str
    id: str
    reason: str  # short category used for counting: "malformed entry", "empty report", "missing image", ...
    detail: str  # what exactly, naming the key path or file

    def describe(self) -> str:
        return f"{self.split}/{self.id}: {self.reason}: {self.detail}"


@dataclass
class Annotation:
    path: Path
    sha256: str
    studies: dict[str, list[Study]] = field(default_factory=dict)
    bad: list[BadSample] = field(default_factory=list)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_entry(entry: object, where: str) -> str | None:
    """The first problem with one entry's fields, as 'key path: what is wrong', or None."""
    if not isinstance(entry, dict):
        return f"{where} must be an object, got {type(entry).__name__}"
    sid = entry.get("id")
    if not isinstance(sid, (str, int)) or str(sid) == "":
        return f"{where}.id must be a non-empty string"
    if any(ch in str(sid) for ch in "./\\ "):
        # WebDataset splits a member name at its first '.', so an id is a tar key and may not hold one.
        return f"{where}.id '{sid}' contains '.', '/', '\\' or a space, which a WebDataset key cannot hold"
    paths = entry.get("image_path")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        return f"{where}.image_path must be a non-empty list of relative image paths"
    if not isinstance(entry.get("report"), str):
        return f"{where}.report must be a string"
    labels = entry.get("labels")
    if labels is not None:
        if not isinstance(labels, dict) or set(labels) - set(CHEXPERT_LABELS):
            return f"{where}.labels must map CheXpert observation names to 1, 0, -1 or null"
        if any(v not in (1, 0, -1, None) for v in labels.values()):
            return f"{where}.labels values must be 1, 0, -1 or null"
    return None


def load_annotation(path: str | Path) -> Annotation:
    path = Path(path)
    if not path.is_file():
        raise R2GError(f"{path}: annotation file not found (pass --annotation path/to/annotation.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise R2GError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise R2GError(f'{path}: expected an object with "train", "val" and/or "test" lists at the top level')

    ann = Annotation(path=path, sha256=sha256_file(path))
    for split in SPLITS:
        if split not in data:
            continue
        entries = data[split]
        if not isinstance(entries, list):
            raise R2GError(f"{path}: {split} must be a list of entries, got {type(entries).__name__}")
        seen: set[str] = set()
        studies = ann.studies.setdefault(split, [])
        for i, entry in enumerate(entries):
            where = f"{split}[{i}]"
            problem = _check_entry(entry, where)
            sid = str(entry.get("id", where)) if isinstance(entry, dict) else where
            if problem is None and sid in seen:
                problem = f"{where}.id '{sid}' appears twice in {split}"
            if problem is not None:
                ann.bad.append(BadSample(split, sid, "malformed entry", problem))
                continue
            seen.add(sid)
            if not entry["report"].strip():
                ann.bad.append(BadSample(split, sid, "empty report", f"{where}.report is empty"))
                continue
            studies.append(
                Study(sid, split, entry["report"], tuple(entry["image_path"]), entry.get("labels"))
            )
    return ann
