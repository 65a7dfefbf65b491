"""annotation.json + image folder → WebDataset tars `{split}-{000000}.tar` + `manifest.json`.

Each sample: key = study id; its images in study order as `0.png`, `1.png`, … (or `.jpg`, bytes as
stored unless `max_side` shrinks them; a DICOM is converted to 8 bits as r2g.data.dicom describes and stored
as PNG); a `json` with id, split, cleaned report, raw report, image names, source paths, `dicom_frames`
({image name: frame read} when a view came from DICOM) and CheXpert `labels` when the annotation has them.

Resumable: every finished shard leaves a small record in `.parts/` with its checksum and the fingerprint of
the inputs and options; a re-run skips shards whose record matches and whose bytes still verify.
Shards are written to a temporary name and renamed, so a crash never leaves a half-written shard behind.

The manifest records each shard's sample count, byte size and sha256: the loader compares sizes at start and
counts samples as they stream (`read_shard`), `verify_shards` is the full checksum pass (`r2g shard verify`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from r2g.config import DATASETS
from r2g.data.annotation import BadSample, Study, load_annotation, sha256_file
from r2g.data.dicom import DICOM_SUFFIXES
from r2g.data.images import decode_xray
from r2g.data.reports import clean_report
from r2g.errors import R2GError

MANIFEST_FORMAT = "r2g-shards/1"
_FORMATS = {".png": ("png", "PNG"), ".jpg": ("jpg", "JPEG"), ".jpeg": ("jpg", "JPEG")}
_SHOW_BAD = 5  # how many bad samples an error message lists before "and N more"
# What finishes a reduced-scale decode. The DCT scaling has already low-passed most of the way (to 764 px
# of 3,056 for 512), so bicubic over the rest lands as close to full decode + LANCZOS as LANCZOS does (closer
# at 128–300 px) and costs 2/3 of it; bilinear, cheaper still, leaves the tolerance at 128–300 px
# (bench/RESULTS.md, "cheaper resize").
RESIZE_AFTER_SCALED_DECODE = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class ShardOptions:
    dataset: str
    max_side: int | None = None
    shard_size: int = 1000
    skip_bad: bool = False


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    studies: tuple[Study, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"


@dataclass
class ShardResult:
    name: str
    split: str
    samples: int
    sha256: str | None  # None when the shard was not written because of bad samples
    bad: list[BadSample]
    reused: bool = False
    bytes: int = 0  # file size, for the loader's cheap start-up check


def plan_shards(studies: dict[str, list[Study]], shard_size: int) -> list[ShardTask]:
    """Cut each split, in annotation order, into consecutive shards of `shard_size` studies."""
    tasks = []
    for split, items in studies.items():
        for index, start in enumerate(range(0, len(items), shard_size)):
            tasks.append(ShardTask(split, index, tuple(items[start : start + shard_size])))
    return tasks


def encode_dicom(path: Path, data: bytes, max_side: int | None) -> tuple[str, bytes, int]:
    """('png', bytes, frame) of a DICOM radiograph: converted to 8 bits as r2g.data.dicom describes (the
    MIMIC-CXR-JPG conversion), stored losslessly. Raises ValueError with a short reason."""
    try:
        xray = decode_xray(data, str(path))
    except R2GError as e:
        raise ValueError(f"undecodable DICOM: {e}") from None
    img = xray.image
    if (size := shrunk_size(img.size, max_side)) is not None:
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "png", buf.getvalue(), xray.source["frame"]


def encode_image(path: Path, max_side: int | None, reduced_decode: bool = True) -> tuple[str, bytes]:
    """(extension, bytes) of one image: stored bytes, or re-encoded when `max_side` shrinks it.

    A JPEG that will be shrunk is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's `draft`),
    the smallest that is still at least the target size, and the rest of the way with RESIZE_AFTER_SCALED_DECODE:
    a 2,544 × 3,056 MIMIC image shrunk to 512 decodes at 764 px instead of 3,056, several times faster, to within
    a few grey levels of full decode + LANCZOS resize (tests/test_shard.py holds the tolerance). An image decoded
    in full is resized with LANCZOS, as before. `reduced_decode=False` decodes in full (the comparison in that
    test and in bench/shard_speed.py).

    Raises ValueError with a short reason for an unsupported, missing or undecodable file.
    """
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported image format '{path.suffix}' (use .png, .jpg or .dcm): {path}")
    ext, pil_format = fmt
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"missing image: {path}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            stored_size = img.size
            size = shrunk_size(img.size, max_side)
            if size is not None and reduced_decode and img.format == "JPEG":
                img.draft(img.mode, size)  # never smaller than `size`: PIL picks the scale that keeps it
            img.load()  # decodes every block (at any scale): truncated files fail here, not in the training loop
            if size is None:
                return ext, data
            scaled = img.size != stored_size
            small = img.resize(size, RESIZE_AFTER_SCALED_DECODE if scaled else Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"undecodable image: {path} ({e})") from None
    buf = io.BytesIO()
    small.save(buf, format=pil_format, **({"quality": 95} if pil_format == "JPEG" else {}))
    return ext, buf.getvalue()


def shrunk_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int] | None:
    """(width, height) of an image of `size` whose longer side becomes `max_side`; None when it is kept."""
    if max_side is None or max(size) <= max_side:
        return None
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def build_sample(study: Study, images_root: Path, opts: ShardOptions) -> dict:
    sample: dict = {"__key__": study.id}
    names, frames = [], {}
    for k, rel in enumerate(study.image_path):
        path = images_root / rel
        if path.suffix.lower() in DICOM_SUFFIXES:
            try:
                ext, data, frames[f"{k}.png"] = encode_dicom(path, path.read_bytes(), opts.max_side)
            except FileNotFoundError:
                raise ValueError(f"missing image: {path}") from None
        else:
            ext, data = encode_image(path, opts.max_side)
        sample[f"{k}.{ext}"] = data
        names.append(f"{k}.{ext}")
    meta = {
        "id": study.id,
        "split": study.split,
        "report": clean_report(study.report, opts.dataset),
        "report_raw": study.report,
        "images": names,
        "source_images": list(study.image_path),
    }
    if frames:  # which frame of which DICOM each converted image is (source_images names the file)
        meta["dicom_frames"] = frames
    if study.labels is not None:
        meta["labels"] = study.labels
    sample["json"] = json.dumps(meta, sort_keys=True).encode()
    return sample


def _reason(message: str) -> str:
    return message.split(":", 1)[0]


def write_shard(task: ShardTask, images_root: Path, out_dir: Path, opts: ShardOptions, fingerprint: str) -> ShardResult:
    """Write one shard (or reuse a verified one). Runs in a worker process."""
    path, record = out_dir / task.name, out_dir / ".parts" / f"{task.name}.json"
    if path.exists() and record.exists():
        done = json.loads(record.read_text())
        if done.get("fingerprint") == fingerprint and sha256_file(path) == done["sha256"]:
            bad = [BadSample(**b) for b in done["bad"]]
            return ShardResult(task.name, task.split, done["samples"], done["sha256"], bad, True, path.stat().st_size)

    samples, bad = [], []
    for study in task.studies:
        try:
            samples.append(build_sample(study, images_root, opts))
        except ValueError as e:
            bad.append(BadSample(study.split, study.id, _reason(str(e)), str(e)))
    if bad and not opts.skip_bad:
        return ShardResult(task.name, task.split, 0, None, bad)

    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        # Fixed owner and mtime make the bytes, and so the checksum, reproducible.
        writer = wds.TarWriter(f, user="r2g", group="r2g", mtime=0, encoder=False)
        for sample in samples:
            writer.write(sample)
        writer.close()
    os.replace(tmp, path)
    digest = sha256_file(path)
    record.write_text(
        json.dumps(
            {"fingerprint": fingerprint, "sha256": digest, "samples": len(samples), "bad": [asdict(b) for b in bad]}
        )
    )
    return ShardResult(task.name, task.split, len(samples), digest, bad, bytes=path.stat().st_size)


def bad_summary(bad: list[BadSample]) -> str:
    counts = Counter(b.reason for b in bad)
    listed = "\n  ".join(b.describe() for b in bad[:_SHOW_BAD])
    more = f"\n  … and {len(bad) - _SHOW_BAD} more" if len(bad) > _SHOW_BAD else ""
    by_reason = ", ".join(f"{n} {r}" for r, n in counts.most_common())
    return f"{len(bad)} bad sample(s) ({by_reason}):\n  {listed}{more}"


def shard_dataset(
    annotation: str | Path,
    images: str | Path,
    out: str | Path,
    opts: ShardOptions,
    workers: int = 1,
    on_shard: Callable[[ShardResult], None] | None = None,
) -> dict:
    """Shard a dataset; returns the manifest (also written to `out/manifest.json`).

    Bad samples stop the run with an error listing them, unless `opts.skip_bad`, in which case they are
    left out, counted per reason and listed in the manifest.
    """
    if opts.dataset not in DATASETS:
        raise R2GError(f"unknown dataset '{opts.dataset}'; choose one of {', '.join(DATASETS)}")
    if opts.shard_size < 1:
        raise R2GError(f"--shard-size must be at least 1, got {opts.shard_size}")
    if opts.max_side is not None and opts.max_side < 8:
        raise R2GError(f"--max-side must be at least 8 pixels, got {opts.max_side}")
    images_root = Path(images)
    if not images_root.is_dir():
        raise R2GError(f"{images_root}: image folder not found (pass --images DIR, the root image_path is relative to)")
    ann = load_annotation(annotation)
    if ann.bad and not opts.skip_bad:
        raise R2GError(f"{ann.path}: {bad_summary(ann.bad)}\nFix them, or pass --skip-bad to leave them out (they are listed in manifest.json).")

    out_dir = Path(out)
    (out_dir / ".parts").mkdir(parents=True, exist_ok=True)
    fingerprint = hashlib.sha256(json.dumps([MANIFEST_FORMAT, ann.sha256, asdict(opts)]).encode()).hexdigest()
    tasks = plan_shards(ann.studies, opts.shard_size)

    results: list[ShardResult] = []
    if workers <= 1:
        for task in tasks:
            results.append(write_shard(task, images_root, out_dir, opts, fingerprint))
            if on_shard:
                on_shard(results[-1])
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(write_shard, t, images_root, out_dir, opts, fingerprint) for t in tasks]
            for future in futures:
                results.append(future.result())
                if on_shard:
                    on_shard(results[-1])

    bad = ann.bad + [b for r in results for b in r.bad]
    if bad and not opts.skip_bad:
        written = sum(r.sha256 is not None for r in results)
        raise R2GError(
            f"{bad_summary(bad)}\nFix them, or pass --skip-bad to leave them out (they are listed in "
            f"manifest.json). {written} clean shard(s) were kept and a re-run skips them."
        )
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": opts.dataset,
        "annotation": {"path": str(ann.path), "sha256": ann.sha256},
        "options": asdict(opts),
        "splits": {
            split: {
                "samples": sum(r.samples for r in results if r.split == split),
                "shards": [
                    {"name": r.name, "samples": r.samples, "sha256": r.sha256, "bytes": r.bytes}
                    for r in results if r.split == split
                ],
            }
            for split in ann.studies
        },
        "bad": {
            "count": len(bad),
            "by_reason": dict(Counter(b.reason for b in bad)),
            "samples": [asdict(b) for b in bad],
        },
        "reused_shards": sum(r.reused for r in results),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(shards: str | Path) -> dict:
    """The manifest of a shard folder, with a clear error when it is missing or not ours."""
    path = Path(shards) / "manifest.json"
    if not path.is_file():
        raise R2GError(f"{path}: not found; --shards must be a folder written by `r2g shard`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise R2GError(f"{path}: format {manifest.get('format')!r} is not {MANIFEST_FORMAT!r}; re-run `r2g shard`")
    return manifest


def _complete(sample: dict) -> bool:
    """Whether a sample holds its json and every image the json names (a cut-off tar ends in a partial one)."""
    try:
        names = json.loads(sample["json"])["images"]
    except (KeyError, ValueError, TypeError):
        return False
    return all(name in sample for name in names)


def read_shard(path: str | Path) -> Iterator[dict]:
    """The complete samples of one shard (raw bytes, keyed as webdataset keys them), in order, ending quietly at
    the first damage: an unreadable header or member, or a sample cut off. Python's tarfile ends an archive
    silently at a corrupt header, so only a count against the manifest tells a damaged shard from a whole one."""

    def stop(exn: Exception) -> bool:  # nothing after damage in a tar stream can be trusted
        return False

    with open(path, "rb") as f:
        files = tar_file_expander([{"url": str(path), "stream": f}], handler=stop)
        for sample in group_by_keys(files, handler=stop):
            if not _complete(sample):
                return
            yield sample


@dataclass(frozen=True)
class ShardCheck:
    """One shard against its manifest entry."""

    name: str
    split: str
    samples: int  # the manifest's count
    read: int | None  # complete samples in the file (the manifest's count when its sha256 matches); None: missing
    checksum_ok: bool

    @property
    def ok(self) -> bool:
        return self.checksum_ok and self.read == self.samples

    def problem(self) -> str:
        if self.read is None:
            return "missing"
        problems = [] if self.checksum_ok else ["checksum differs"]
        if self.read != self.samples:
            problems.append(f"{self.read} of {self.samples} samples readable")
        return ", ".join(problems)


def verify_shards(shards: str | Path, on_shard: Callable[[ShardCheck], None] | None = None,
                  manifest: dict | None = None) -> list[ShardCheck]:
    """A full pass over every shard of the manifest (`manifest`: the folder's, already read; None = read it):
    sha256 against the manifest, and, only for a shard whose sha256 differs, its complete samples counted (the
    manifest's bytes hold exactly the manifest's count)."""
    root, manifest = Path(shards), read_manifest(shards) if manifest is None else manifest
    checks = []
    for split, entry in manifest["splits"].items():
        for s in entry["shards"]:
            path = root / s["name"]
            if path.is_file():
                checksum_ok = sha256_file(path) == s["sha256"]
                read = s["samples"] if checksum_ok else sum(1 for _ in read_shard(path))
                check = ShardCheck(s["name"], split, s["samples"], read, checksum_ok)
            else:
                check = ShardCheck(s["name"], split, s["samples"], None, False)
            checks.append(check)
            if on_shard:
                on_shard(check)
    return checks
