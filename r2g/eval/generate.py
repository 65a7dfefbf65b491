"""Reports for new images: image files → studies → batched beam search with a trained run."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from r2g.data.loader import Collate
from r2g.data.transforms import image_transform, to_rgb_tensor
from r2g.errors import R2GError
from r2g.eval.reconstitute import LoadedRun

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


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
                raise R2GError(f"{arg}: folder holds no .png/.jpg images")
            studies += [[p] for p in found]
        else:
            studies.append([Path(arg)])
    if not studies:
        raise R2GError("no images given: pass image files, folders, or frontal.png,lateral.png pairs")
    for paths in studies:
        for path in paths:
            read_image(path)  # decodes, or names the bad file
    return studies


def read_image(path: Path) -> Image.Image:
    """The image at `path`, decoded whole, or an R2GError naming it. (Image.verify would be cheaper but does not
    read JPEG data, so a truncated JPEG would pass.)"""
    if not path.is_file():
        raise R2GError(f"{path}: image not found")
    try:
        with Image.open(path) as img:
            img.load()  # the pixels stay in memory when the file closes
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # SyntaxError: PIL's bad-PNG-chunk error
        raise R2GError(f"{path}: not a readable image ({e})") from None
    return img


def load_view(path: Path, transform) -> torch.Tensor:
    return to_rgb_tensor(read_image(path), transform)


def generate_reports(run: LoadedRun, studies: list[list[Path]]) -> list[dict]:
    """[{"images": [paths], "report": text}] for each study, in order, by the run (`load_run`) with its
    generation settings. With the LLM partitioned over several ranks (`run.synced`), every rank runs this on
    the same studies, stepping together until all ranks' beams are done."""
    model, precision, device, gen = run.model, run.precision, run.device, run.generate
    transform = image_transform(run.cfg.data.image_size)
    collate = Collate(run.cfg.data.max_views)
    results = []
    for start in range(0, len(studies), gen.batch_size):
        chunk = studies[start : start + gen.batch_size]
        batch = collate([
            {"id": str(i), "views": [load_view(p, transform) for p in paths], "report": "", "labels": None}
            for i, paths in enumerate(chunk)
        ])
        with precision.autocast(device):
            reports = model.generate(batch["images"].to(device, precision.input_dtype), batch["view_mask"], gen,
                                     synced_gpus=run.synced)
        results += [{"images": [str(p) for p in paths], "report": r} for paths, r in zip(chunk, reports)]
    return results
