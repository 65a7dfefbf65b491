"""A synthetic chest X-ray dataset in the R2Gen raw layout (`r2g synth`): images/<id>/<view>.png and an
annotation.json whose entries carry the report and the CheXpert labels it asserts.

Each study is sampled (`sample`), drawn (`render`) and written up (`report_text`) on its own random streams,
so the dataset is the same whichever worker process builds which study.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
from PIL import Image

from r2g.demo.render import render_frontal, render_lateral
from r2g.demo.report_text import write_report
from r2g.demo.sample import STREAM_SPLIT, STYLES, sample_study
from r2g.errors import R2GError
from r2g.labels import CHEXPERT_LABELS

SPLITS = ("train", "val", "test")
_TRAIN_FRACTION, _VAL_FRACTION = 0.7, 0.1


def split_counts(studies: int) -> dict[str, int]:
    """Studies per split (7:1:2, rounded; test takes the remainder)."""
    train = round(studies * _TRAIN_FRACTION)
    val = min(round(studies * _VAL_FRACTION), studies - train)
    return {"train": train, "val": val, "test": studies - train - val}


def _assign_splits(studies: int, seed: int) -> list[str]:
    counts = split_counts(studies)
    names = [s for s in SPLITS for _ in range(counts[s])]
    order = np.random.default_rng([seed, STREAM_SPLIT]).permutation(studies)
    out = [""] * studies
    for rank, index in enumerate(order):
        out[index] = names[rank]
    return out


def _build_study(job: tuple[str, str, int, int, int, str]) -> dict:
    """Sample, draw, save and describe one study (runs in a worker process)."""
    images_dir, style, seed, index, size, split = job
    study = sample_study(seed, index, style)
    folder = Path(images_dir) / study.study_id
    folder.mkdir(parents=True, exist_ok=True)
    views = [render_frontal(study, size)] + ([render_lateral(study, size)] if study.views == 2 else [])
    paths = []
    for view, pixels in enumerate(views):
        Image.fromarray(pixels).save(folder / f"{view}.png", format="PNG", compress_level=1)
        paths.append(f"{study.study_id}/{view}.png")
    report, labels = write_report(study)
    return {"id": study.study_id, "report": report, "image_path": paths, "split": split, "labels": labels}


def _validate(out_dir, studies, style, seed, image_size, workers) -> Path:
    if style not in STYLES:
        raise R2GError(f"unknown synthetic data style '{style}'; choose one of: {', '.join(STYLES)}")
    for name, value, low, high in (("studies", studies, 1, None), ("seed", seed, 0, None),
                                   ("image_size", image_size, 64, 1024), ("workers", workers, 0, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise R2GError(f"synthetic data: {name} must be an integer {bounds}, got {value!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise R2GError(f"synthetic data output '{out}' exists and is not a directory; choose another --out")
    return out


def generate(out_dir: str | Path, studies: int, style: str = "mimic_cxr", seed: int = 0, image_size: int = 256,
             workers: int = 2) -> dict:
    """Write `studies` synthetic studies to `out_dir` (images/<id>/<view>.png + annotation.json, R2Gen layout).

    Deterministic in (studies, style, seed, image_size), whatever `workers` is. Workers are spawned
    processes, so a script calling this with workers > 1 needs the usual `if __name__ == "__main__":`
    guard. Existing files are overwritten; stale study folders from a larger earlier run are left.
    Returns a summary: studies per split, images written, label counts, seconds.
    """
    out = _validate(out_dir, studies, style, seed, image_size, workers)
    start = time.perf_counter()
    images_dir = out / "images"
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise R2GError(f"cannot create synthetic data folder '{images_dir}': {exc.strerror}") from exc
    splits = _assign_splits(studies, seed)
    jobs = [(str(images_dir), style, seed, index, image_size, splits[index]) for index in range(studies)]
    workers = min(workers, studies)
    if workers <= 1:
        entries = [_build_study(job) for job in jobs]
    else:
        # spawn, not fork: the caller may already hold CUDA or OpenMP threads, which fork breaks.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            entries = pool.map(_build_study, jobs, chunksize=max(1, min(32, studies // (4 * workers))))
    annotation = {split: [e for e in entries if e["split"] == split] for split in SPLITS}
    (out / "annotation.json").write_text(json.dumps(annotation), encoding="utf-8")
    return {
        "out_dir": str(out),
        "style": style,
        "studies": {split: len(annotation[split]) for split in SPLITS},
        "images": sum(len(e["image_path"]) for e in entries),
        "labels": _label_counts(entries),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _label_counts(entries: list[dict]) -> dict[str, dict[str, int]]:
    counts = {lab: {"positive": 0, "uncertain": 0, "negative": 0, "blank": 0} for lab in CHEXPERT_LABELS}
    names = {1: "positive", -1: "uncertain", 0: "negative", None: "blank"}
    for entry in entries:
        for lab, value in entry["labels"].items():
            counts[lab][names[value]] += 1
    return counts
