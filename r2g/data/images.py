"""One chest X-ray file (PNG, JPEG or DICOM) → an 8-bit image, checked, with a record of what was read.

The one reader behind `r2g generate`, `r2g serve` and `r2g shard`'s DICOM input, so that a file reads the same
everywhere, and a file that cannot be a chest X-ray r2g reads fails with one message naming it:
empty, not an image, too many pixels, or a 16-bit PNG/TIFF-style image (its windowing is unknown: clipping it
to 8 bits would show the model a white square, so it is refused rather than guessed; its DICOM carries the
windowing and reads).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from r2g.data.dicom import is_dicom, read_dicom
from r2g.errors import R2GError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
# Far above any chest detector (the largest are about 4,300 × 4,300 = 18.5 MP); bounds the memory one upload
# can take before it is decoded.
MAX_PIXELS = 50_000_000
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class XRay:
    """A decoded X-ray and where it came from: `source` is {"file", "format"} and, for DICOM, the "frame" read
    and its "photometric" interpretation and "transfer_syntax"."""

    image: Image.Image  # mode "L" (DICOM) or as stored (PNG/JPEG: L, RGB, ...), 8 bits per channel
    source: dict = field(default_factory=dict)


def decode_xray(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> XRay:
    """The X-ray in `data`, read from file `name` (named in every error)."""
    if not data:
        raise R2GError(f"{name}: empty file")
    if is_dicom(data, name):
        d = read_dicom(data, name, max_pixels)
        return XRay(Image.fromarray(d.pixels, mode="L"),
                    {"file": name, "format": "dicom", "frame": d.frame, "photometric": d.photometric,
                     "transfer_syntax": d.transfer_syntax})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise R2GError(f"{name}: {img.width}×{img.height} pixels, over the limit of {max_pixels / 1e6:.0f} "
                           "megapixels; downscale it (chest X-rays are read at 224 px)")
        if img.mode in _HIGH_BIT_MODES:
            raise R2GError(f"{name}: a {img.mode} ({'16' if '16' in img.mode else '32'}-bit) image: r2g reads 8-bit "
                           "PNG/JPEG, as the datasets store them; without the original windowing a 16-bit image "
                           "cannot be brought to 8 bits faithfully: give the DICOM, or an 8-bit export")
        img.load()  # a full decode: a truncated file fails here, not in the model
    except R2GError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise R2GError(f"{name}: not a readable image ({e})") from None  # SyntaxError: PIL's bad-PNG-chunk error
    return XRay(img, {"file": name, "format": (img.format or "image").lower()})


def read_xray(path: str | Path, max_pixels: int = MAX_PIXELS) -> XRay:
    """The X-ray in the file at `path`, or an R2GError naming it."""
    path = Path(path)
    if not path.is_file():
        raise R2GError(f"{path}: image not found")
    return decode_xray(path.read_bytes(), str(path), max_pixels)
