"""Reports for new images: image files (PNG, JPEG, DICOM) → studies → batched beam search with a trained run."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from r2g.config import GenerateConfig
from r2g.data.images import IMAGE_SUFFIXES, XRay, read_xray
from r2g.data.loader import Collate
from r2g.data.transforms import image_transform, to_rgb_tensor
from r2g.errors import R2GError
from r2g.eval.reconstitute import LoadedRun


def collect_studies(inputs: list[str]) -> list[list[Path]]:
    """Each argument is one study: an image, `frontal.png,lateral.png` (a study with two views), or a folder
    (each image inside becomes its own study, in name order). Every image is checked to exist and decode, so
    a bad one fails before the model loads."""
    studies = []
    for arg in inputs:
        if "," in arg:
            studies.append([Path(p) for p in arg.split(",") if p])
        elif Path(arg).is_dir():
            found = sorted(p for p in Path(arg).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise R2GError(f"{arg}: folder holds no .png/.jpg/.dcm images")
            studies += [[p] for p in found]
        else:
            studies.append([Path(arg)])
    if not studies:
        raise R2GError("no images given: pass image files, folders, or frontal.png,lateral.png pairs")
    for paths in studies:
        for path in paths:
            read_xray(path)  # decodes, or names the bad file
    return studies


def reports_for_images(run: LoadedRun, studies: list[list[Image.Image]], gen: GenerateConfig | None = None) -> list[str]:
    """One report per study (its views as decoded images), in order, by the run (`load_run`) with its generation
    settings or `gen`. With the LLM partitioned or split over several ranks (`run.synced`: --ds, --tp), every rank
    runs this on the same studies, stepping together until all ranks' beams are done."""
    model, precision, device, gen = run.model, run.precision, run.device, gen or run.generate
    transform = image_transform(run.cfg.data.image_size)
    collate = Collate(run.cfg.data.max_views)
    reports: list[str] = []
    for start in range(0, len(studies), gen.batch_size):
        chunk = studies[start : start + gen.batch_size]
        batch = collate([
            {"id": str(i), "views": [to_rgb_tensor(img, transform) for img in views], "report": "", "labels": None}
            for i, views in enumerate(chunk)
        ])
        with precision.autocast(device):
            reports += model.generate(batch["images"].to(device, precision.input_dtype), batch["view_mask"], gen,
                                      synced_gpus=run.synced)
    return reports


def generate_reports(run: LoadedRun, studies: list[list[Path]]) -> list[dict]:
    """[{"images": [paths], "sources": [what was read of each: file, format, DICOM frame], "report": text}]
    for each study, in order (see `reports_for_images`)."""
    step = run.generate.batch_size
    results = []
    for start in range(0, len(studies), step):  # a batch's images in memory at a time, not the whole folder's
        chunk = studies[start : start + step]
        read: list[list[XRay]] = [[read_xray(p) for p in paths] for paths in chunk]
        reports = reports_for_images(run, [[x.image for x in views] for views in read])
        results += [{"images": [str(p) for p in paths], "sources": [x.source for x in views], "report": r}
                    for paths, views, r in zip(chunk, read, reports)]
    return results
