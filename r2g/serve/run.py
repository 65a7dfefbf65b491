"""A trained run as `r2g serve` uses it: loaded once, then asked for reports of uploaded views or of a study of
its own test split, each report labelled (CheXpert, r2g's labeler) and, for a study, scored against its reference.

Nothing here writes a file: uploads arrive as bytes and are decoded in memory.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from r2g.config import GenerateConfig
from r2g.data.dicom import is_dicom
from r2g.data.images import IMAGE_SUFFIXES, XRay, decode_xray
from r2g.data.loader import split_shards
from r2g.errors import R2GError
from r2g.eval.generate import reports_for_images
from r2g.eval.reconstitute import LoadedRun
from r2g.labels import CHEXPERT_LABELS
from r2g.metrics.chexpert import label_reports

THUMBNAIL_SIDE = 256
# Bounds of the decoding settings a page may ask for: wide enough for any real use, narrow enough that one
# request cannot hold the model for minutes.
LIMITS = {"num_beams": (1, 8), "max_new_tokens": (1, 512), "repetition_penalty": (1.0, 3.0)}
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG; DICOM's is is_dicom's


def load(ckpt: str | Path, llm: str | None = None, vision_weights: str | None = None, checkpoint: str | None = None,
         allow_llm_mismatch: bool = False) -> LoadedRun:
    """The run loaded as `r2g generate` loads it: checked by open_run, then load_run (the one inference loader) on
    the GPU when there is one, in the run's precision."""
    from r2g.eval.reconstitute import load_run, open_run

    return load_run(open_run(ckpt, llm, vision_weights, checkpoint=checkpoint, allow_llm_mismatch=allow_llm_mismatch))


@dataclass
class Answer:
    """What the page shows for one request."""

    report: str
    labels: dict[str, int | None]
    sources: list[dict]  # per view: file name as uploaded (or shard member), format, DICOM frame
    thumbnails: list[str]  # data: URLs of what the model read, after DICOM conversion
    settings: dict
    seconds: float
    started_at: float = 0.0  # wall-clock start and end of the model's work, for the queue's record
    finished_at: float = 0.0
    study: dict = field(default_factory=dict)  # a test study: id, reference, reference_labels, scores
    folder: dict = field(default_factory=dict)  # a study folder: name, views (in the order read), ignored

    def to_dict(self) -> dict:
        return asdict(self)


def thumbnail(img: Image.Image) -> str:
    small = img.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    small.convert("L" if small.mode in ("L", "I;16", "1") else "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def report_scores(reference: str, prediction: str) -> dict[str, float]:
    """BLEU-1..4 and ROUGE-L of one report (as report.html ranks its examples by ROUGE-L). CIDEr is left out: its
    weights come from a corpus's document frequencies, which one report does not have."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = {"0": [reference]}, {"0": [prediction]}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    return scores


def is_view(name: str, data: bytes) -> bool:
    """Whether a file of a study folder is one of its views: an image by its name or by its content (a PACS export
    often names its DICOMs IM0001, no suffix). Hidden files are not: .DS_Store, and the ._0.png files macOS leaves
    on shared drives, which carry an image's name but hold no image."""
    if name.startswith("."):
        return False
    return name.lower().endswith(IMAGE_SUFFIXES) or data.startswith(IMAGE_SIGNATURES) or is_dicom(data)


def folder_views(folder: str, files: list[tuple[str, bytes]], subfolders: list[str],
                 max_views: int) -> tuple[list[tuple[str, bytes]], list[str]]:
    """(its views in name order, the names of everything else) of a study folder sent as its own files
    [(name, bytes)] and the names of its subfolders (not read: a study's views lie in its folder), or an R2GError
    naming the folder and how many images it holds.

    Name order, because a folder records no view position: IU-Xray numbers a study's views 0.png, 1.png in
    annotation.json's order, and `r2g generate` reads a folder in name order too; MIMIC's hashed file names follow
    no view. A run that averages its views (view_merge mean) gives the same report in any order; with concat the
    first name takes the first view's place."""
    views = sorted((f for f in files if is_view(*f)), key=lambda f: f[0])
    ignored = sorted(name for name, data in files if not is_view(name, data)) + [f"{s}/" for s in sorted(subfolders)]
    if not 1 <= len(views) <= max_views:
        named = f" ({', '.join(name for name, _ in views)})" if views else ""
        raise R2GError(f"folder '{folder}': {len(views)} images{named} among its {len(files)} files; a study's folder "
                       f"holds 1 to {max_views} views (PNG, JPEG or DICOM)")
    return views, ignored


class ServedRun:
    """A loaded run and its test split. Not thread-safe: the server calls it from one worker thread."""

    def __init__(self, run: LoadedRun, split: str = "test"):
        self.run, self.split = run, split
        self.folder, self.cfg, self.device, self.precision = run.folder, run.cfg, run.device, run.precision
        self.studies, self.studies_error = self._index_split()

    # ------------------------------------------------------------------------------------------- facts
    def facts(self) -> dict:
        """The header: base LLM, mode, trained steps, best validation scores, device, precision, decoding defaults."""
        run = self.folder.path
        best = json.loads((run / "best.json").read_text()) if (run / "best.json").is_file() else {}
        steps = None
        if (run / "metrics.jsonl").is_file():
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            steps = max((r["step"] for r in rows if "step" in r), default=None)
        gen = self.run.generate
        return {
            "run": str(run), "name": run.name, "llm": self.cfg.model.llm, "llm_name": Path(self.cfg.model.llm).name,
            "mode": self.cfg.model.mode, "dataset": self.cfg.data.dataset, "steps": steps,
            "weights": self.folder.checkpoint or "trainable.safetensors",
            "best": {"step": best.get("step"), "metric": best.get("metric"), "scores": best.get("scores", {})},
            "device": str(self.device), "precision": self.precision.name,
            "defaults": {"num_beams": gen.num_beams, "max_new_tokens": gen.max_new_tokens,
                         "repetition_penalty": gen.repetition_penalty},
            "limits": LIMITS, "max_views": self.cfg.data.max_views, "view_merge": self.cfg.model.view_merge,
            "labels": list(CHEXPERT_LABELS),
            "split": self.split, "studies": len(self.studies), "studies_error": self.studies_error,
        }

    # ------------------------------------------------------------------------------------------- settings
    def settings(self, asked: dict | None) -> GenerateConfig:
        """The run's generation settings with the page's beams / max new tokens / repetition penalty, checked."""
        given = {}
        for key, (low, high) in LIMITS.items():
            value = (asked or {}).get(key)
            if value in (None, ""):
                continue
            kind = float if isinstance(low, float) else int
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise R2GError(f"{key}: '{value}' is not a number") from None
            if not low <= value <= high:
                raise R2GError(f"{key}: {value} is outside {low}..{high}")
            given[key] = value
        gen = dataclasses.replace(self.run.generate, **given)
        # The run's floor on report length cannot exceed the ceiling asked for.
        return dataclasses.replace(gen, min_new_tokens=min(gen.min_new_tokens, gen.max_new_tokens), batch_size=1)

    # ------------------------------------------------------------------------------------------- answers
    def _answer(self, views: list[XRay], asked: dict | None) -> Answer:
        gen = self.settings(asked)
        started = time.time()
        (report,) = reports_for_images(self.run, [[v.image for v in views]], gen)
        finished = time.time()
        (labels,) = label_reports([report])
        return Answer(report, labels, [v.source for v in views], [thumbnail(v.image) for v in views],
                      {k: getattr(gen, k) for k in LIMITS}, round(finished - started, 3), started, finished)

    def upload(self, files: list[tuple[str, bytes]], asked: dict | None = None) -> Answer:
        """The report for one study of uploaded views [(file name, bytes)], in the order given."""
        if not files:
            raise R2GError("no image uploaded: choose one or two views (PNG, JPEG or DICOM)")
        if len(files) > self.cfg.data.max_views:
            raise R2GError(f"{len(files)} files: a study has at most {self.cfg.data.max_views} views for this run")
        return self._answer([decode_xray(data, name) for name, data in files], asked)

    def study(self, study_id: str, asked: dict | None = None) -> Answer:
        """The report for a study of the run's test split, beside its reference, labels and scores."""
        if study_id not in self.studies:
            raise R2GError(f"study '{study_id}' is not in the {self.split} split of {self.cfg.data.shards}")
        meta, views = read_study(self.studies[study_id], study_id)
        answer = self._answer([decode_xray(data, f"{study_id}/{name}") for name, data in views], asked)
        reference = meta["report"]
        (ref_labels,) = label_reports([reference])
        answer.study = {"id": study_id, "reference": reference, "reference_labels": ref_labels,
                        "scores": report_scores(reference, answer.report),
                        "labels_agree": sum(ref_labels[k] == answer.labels[k] for k in CHEXPERT_LABELS)}
        return answer

    # ------------------------------------------------------------------------------------------- test split
    def _index_split(self) -> tuple[dict[str, str], str]:
        """({study id: shard path}, "") for the split, or ({}, why not): the page works without it."""
        try:
            checked = split_shards(self.cfg.data.shards, self.split)
        except R2GError as e:
            return {}, str(e)
        index = {}
        for path in checked.paths:
            with tarfile.open(path) as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    if ext == "json":
                        index[key] = path
        return index, ""


def read_study(shard: str, study_id: str) -> tuple[dict, list[tuple[str, bytes]]]:
    """(its json record, [(image name, bytes)] in view order) of one study in a shard."""
    meta, views = {}, {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, rest = member.name.partition(".")
            if key != study_id:
                continue
            data = tar.extractfile(member).read()
            if rest == "json":
                meta = json.loads(data)
            else:
                views[rest] = data
    return meta, [(name, views[name]) for name in meta.get("images", sorted(views))]
