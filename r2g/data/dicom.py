"""A chest radiograph stored as DICOM → the 8-bit grayscale image r2g's models read.

The steps, in order:
  1. decode the pixel data (pydicom; pylibjpeg's handlers decode the JPEG baseline / extended / lossless and
     JPEG 2000 transfer syntaxes hospitals archive radiographs in, pydicom itself RLE and the uncompressed ones);
  2. the modality LUT (Rescale Slope / Intercept, or a Modality LUT Sequence), then the VOI LUT (a VOI LUT
     Sequence, else the first Window Center / Width), as pydicom applies them;
  3. MONOCHROME1 (white = low values) inverted, so that bone is bright as in MONOCHROME2 and in every PNG/JPG
     chest X-ray dataset;
  4. the 8-bit conversion MIMIC-CXR-JPG's authors describe (Johnson et al. 2019, "MIMIC-CXR-JPG, a large
     publicly available database of labeled chest radiographs", arXiv:1901.07042, and its PhysioNet page):
     shift so the lowest value is 0, divide by the highest shifted value, scale to 255 and truncate to an
     unsigned integer; then histogram equalisation as OpenCV's `equalizeHist` does it. (They then saved JPEGs
     at quality 95; r2g keeps the 8-bit pixels as they are, with no lossy step.)

So a DICOM reaches the model as the MIMIC-CXR-JPG file made from it would, which is what R2GenGPT's MIMIC-CXR
models were trained on. Only single-frame grayscale radiographs are read; anything else (no pixel data, a
CT slice, a multi-frame or colour file) is an R2GError naming the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from r2g.errors import R2GError

# Modalities of projection radiographs: computed / digital radiography, radiographic imaging, and "other"
# (secondary captures of radiographs are often tagged OT). Anything else (CT, MR, US, ...) is not a chest X-ray.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "OT")
DICOM_SUFFIXES = (".dcm", ".dicom")
_INSTALL = "install the DICOM extra: pip install 'r2g[dicom]'"


def is_dicom(data: bytes, name: str = "") -> bool:
    """A DICOM file by its 'DICM' marker after the 128-byte preamble, or by its name (files without a preamble)."""
    return data[128:132] == b"DICM" or name.lower().endswith(DICOM_SUFFIXES)


@dataclass(frozen=True)
class DicomImage:
    pixels: np.ndarray  # (H, W) uint8, MIMIC-CXR-JPG's conversion
    frame: int  # the frame read (always 0: multi-frame files are refused)
    photometric: str
    transfer_syntax: str
    modality: str


def equalize_hist(img: np.ndarray) -> np.ndarray:
    """OpenCV's `equalizeHist` on a uint8 image: the lowest occupied level maps to 0, each level above it to
    255 × (pixels at or below it, less those at the lowest) / (pixels above the lowest), rounded to nearest even."""
    hist = np.bincount(img.ravel(), minlength=256)
    lowest = int(np.flatnonzero(hist)[0])
    above = img.size - hist[lowest]
    if above == 0:  # one level only: OpenCV leaves it as it is
        return img.copy()
    lut = np.rint((np.cumsum(hist) - hist[lowest]) * (255.0 / above)).clip(0, 255).astype(np.uint8)
    return lut[img]


def to_uint8(values: np.ndarray) -> np.ndarray:
    """MIMIC-CXR-JPG's 8-bit scaling: (x - min) × 255 / (max - min), truncated. A constant image becomes 0s."""
    values = values.astype(np.float64)
    values -= values.min()
    top = values.max()
    if top > 0:
        values = values * 255.0 / top  # multiply first: exact for integer inputs whose range divides evenly
    return np.floor(values).clip(0, 255).astype(np.uint8)


def _refuse(name: str, ds) -> None:
    """An R2GError naming `name` when the dataset is not a single-frame grayscale radiograph."""
    if "PixelData" not in ds and "SOPClassUID" not in ds:  # forced parsing of a file that is not DICOM
        raise R2GError(f"{name}: not a readable DICOM file (no image, no SOP class found in it)")
    if "PixelData" not in ds:
        kind = getattr(getattr(ds, "SOPClassUID", None), "name", "") or "unknown SOP class"
        raise R2GError(f"{name}: DICOM without pixel data ({kind}): not an image")
    modality = str(ds.get("Modality", "") or "")
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise R2GError(f"{name}: a {modality} image, not a radiograph: r2g reads chest X-rays "
                       f"(DICOM Modality {', '.join(RADIOGRAPH_MODALITIES)})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise R2GError(f"{name}: a multi-frame DICOM ({frames} frames): r2g reads single-frame radiographs; "
                       "save the frame to report on as its own file")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise R2GError(f"{name}: a colour DICOM ({ds.get('PhotometricInterpretation', '?')}): chest radiographs "
                       "are MONOCHROME1 or MONOCHROME2")


def read_dicom(data: bytes, name: str, max_pixels: int) -> DicomImage:
    """The radiograph in DICOM bytes `data` (from file `name`), converted as the module docstring says."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise R2GError(f"{name}: reading DICOM needs pydicom; {_INSTALL}") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not data[128:132] == b"DICM")
        _ = ds.get("Modality")  # force=True parses lazily: a non-DICOM file fails on first access
    except (InvalidDicomError, ValueError, EOFError, OSError, AttributeError, KeyError, TypeError) as e:
        raise R2GError(f"{name}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    _refuse(name, ds)
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise R2GError(f"{name}: {cols}×{rows} pixels, over the limit of {max_pixels / 1e6:.0f} megapixels")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = syntax.name if syntax else "Implicit VR Little Endian (no file meta)"
    try:
        pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001 pydicom raises several types for missing handlers and bad data
        raise R2GError(f"{name}: its pixel data ({syntax_name}) does not decode ({type(e).__name__}: {e}); "
                       f"for compressed transfer syntaxes {_INSTALL}") from None
    if pixels.ndim != 2:
        raise R2GError(f"{name}: pixel data of shape {pixels.shape}, not one grayscale frame")
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds, index=0)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":
        values = -values.astype(np.float64)  # any reflection will do: the scaling below maps min to 0, max to 255
    return DicomImage(equalize_hist(to_uint8(values)), 0, photometric, syntax_name, str(ds.get("Modality", "")))
