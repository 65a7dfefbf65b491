"""DICOM files written by pydicom for the tests: a radiograph's pixels as a modality stores them (12-bit, a
rescale, MONOCHROME1 or 2, a window), compressed or not, and the bad kinds (no pixels, CT, multi-frame)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def dataset(pixels: np.ndarray | None, modality: str = "DX", photometric: str = "MONOCHROME2",
            bits_stored: int = 12, sop_class: str = DX_FOR_PRESENTATION):
    """A dataset holding `pixels` (uint16, (H, W) or (frames, H, W); None: no pixel data), uncompressed."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if pixels is not None:
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def radiograph_from_png(png: np.ndarray, monochrome1: bool = True):
    """The 8-bit image `png` as a detector would store it: 12 bits (x × 16 + 7), MONOCHROME1 (inverted) by
    default, with a rescale (slope 0.5, intercept -100) that the modality LUT undoes."""
    stored = png.astype(np.uint16) * 16 + 7
    if monochrome1:
        stored = 4095 - stored
    ds = dataset(stored, photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2")
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 0.5, -100, "US"
    return ds


def save(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)  # with the 128-byte preamble and 'DICM', as archives write them
    return path


def synthetic_xray(index: int = 3, size: int = 64) -> np.ndarray:
    """One of `r2g synth`'s frontal chest X-rays (mimic_cxr style, seed 0), as 8-bit pixels."""
    from r2g.demo.render import render_frontal
    from r2g.demo.sample import sample_study

    return np.asarray(render_frontal(sample_study(0, index, "mimic_cxr"), size), dtype=np.uint8)
