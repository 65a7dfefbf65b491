"""DICOM in: the MIMIC-CXR-JPG conversion (modality and VOI LUT, MONOCHROME1, 8-bit scaling, equalisation),
compressed transfer syntaxes, `r2g shard` on DICOM, and every refused file (named in its message), as well as
the checks every upload and image file goes through (empty, too large, 16-bit)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from r2g.data.dicom import equalize_hist, read_dicom, to_uint8
from r2g.data.images import decode_xray, read_xray
from r2g.data.shard import ShardOptions, shard_dataset
from r2g.demo.toys import write_raw_dataset
from r2g.errors import R2GError

from .dicoms import BASIC_TEXT_SR, dataset, radiograph_from_png, save

pytest.importorskip("pydicom")


def chest_like(seed: int = 0, shape=(48, 56)) -> np.ndarray:
    """An 8-bit image with uneven levels in 20..229 (so that equalisation changes it)."""
    rng = np.random.default_rng(seed)
    return (20 + 209 * rng.beta(2, 5, shape)).astype(np.uint8)


def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_equalize_hist_follows_opencv_formula():
    img = np.array([[10, 10, 20, 30], [30, 30, 30, 200]], dtype=np.uint8)
    # lowest level 10 (2 pixels) -> 0; above it 6 pixels; 20: 1/6, 30: 5/6, 200: 6/6 of 255, rounded
    assert equalize_hist(img).tolist() == [[0, 0, 42, 212], [212, 212, 212, 255]]
    assert equalize_hist(np.full((3, 3), 7, np.uint8)).tolist() == [[7] * 3] * 3  # one level: unchanged
    assert to_uint8(np.array([100.0, 150.0, 300.0])).tolist() == [0, 63, 255]  # (x-min)*255/(max-min), truncated


@pytest.mark.parametrize("monochrome1", [True, False])
def test_a_12_bit_radiograph_reads_as_mimic_cxr_jpg_would_store_its_png(monochrome1):
    """Rescale undone by the modality LUT, MONOCHROME1 inverted, scaled to 8 bits: equalize(png) exactly."""
    png = chest_like()
    d = read_dicom(dicom_bytes(radiograph_from_png(png, monochrome1)), "x.dcm", 10**8)
    assert d.pixels.dtype == np.uint8 and d.pixels.shape == png.shape and d.frame == 0
    assert np.array_equal(d.pixels, equalize_hist(png))
    assert not np.array_equal(d.pixels, png)  # the equalisation MIMIC-CXR-JPG applied changes the levels
    assert d.photometric == ("MONOCHROME1" if monochrome1 else "MONOCHROME2")
    assert d.pixels[png == png.max()].min() == 255  # bright stays bright after the inversion


def test_the_voi_window_clips_before_scaling():
    png = chest_like()
    ds = radiograph_from_png(png, monochrome1=False)
    # modality values are (x*16+7)*0.5-100; a window over the upper half of them saturates the lower half
    values = (png.astype(float) * 16 + 7) * 0.5 - 100
    ds.WindowCenter, ds.WindowWidth = float(np.median(values) + 40), 80.0
    d = read_dicom(dicom_bytes(ds), "w.dcm", 10**8)
    dark = values <= np.median(values)
    assert len(np.unique(d.pixels[dark])) == 1  # all clipped to the window's floor: one level
    assert len(np.unique(d.pixels)) < len(np.unique(png))


def test_compressed_transfer_syntaxes_decode():
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    png = chest_like(1)
    plain = read_dicom(dicom_bytes(radiograph_from_png(png)), "plain.dcm", 10**8)
    j2k = radiograph_from_png(png)
    j2k.compress(JPEG2000Lossless)
    d = read_dicom(dicom_bytes(j2k), "j2k.dcm", 10**8)
    assert d.transfer_syntax.startswith("JPEG 2000") and np.array_equal(d.pixels, plain.pixels)

    # JPEG baseline as an archive stores it: the JPEG stream encapsulated, 8 bits
    jpeg = io.BytesIO()
    Image.fromarray(png).save(jpeg, format="JPEG", quality=95)
    ds = dataset(None)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns = png.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    d = read_dicom(dicom_bytes(ds), "jpeg.dcm", 10**8)
    expected = equalize_hist(to_uint8(np.asarray(Image.open(jpeg))))
    assert d.transfer_syntax == "JPEG Baseline (Process 1)"
    assert np.abs(d.pixels.astype(int) - expected).mean() < 2  # decoders may differ by a level here and there


@pytest.mark.parametrize("make, message", [
    (lambda: b"\0" * 128 + b"DICM" + b"\x02\x00garbage", "not a readable DICOM file"),
    (lambda: b"just some text, named .dcm", "not a readable DICOM file"),
    (lambda: dicom_bytes(dataset(None, sop_class=BASIC_TEXT_SR, modality="SR")), "DICOM without pixel data"),
    (lambda: dicom_bytes(dataset(np.zeros((8, 8), np.uint16), modality="CT")), "a CT image, not a radiograph"),
    (lambda: dicom_bytes(dataset(np.zeros((3, 8, 8), np.uint16))), r"a multi-frame DICOM \(3 frames\)"),
])
def test_bad_dicoms_are_refused_naming_the_file(make, message, tmp_path):
    path = tmp_path / "study" / "bad.dcm"
    path.parent.mkdir()
    path.write_bytes(make())
    with pytest.raises(R2GError, match=message) as e:
        read_xray(path)
    assert str(e.value).startswith(str(path))


def test_uploads_empty_huge_16_bit_or_not_images_are_refused():
    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    with pytest.raises(R2GError, match="a.png: empty file"):
        decode_xray(b"", "a.png")
    with pytest.raises(R2GError, match=r"b.png: 300×200 pixels, over the limit"):
        decode_xray(png(Image.new("L", (300, 200))), "b.png", max_pixels=50_000)
    with pytest.raises(R2GError, match=r"c.png: a I;16 \(16-bit\) image"):
        decode_xray(png(Image.fromarray(np.full((8, 8), 4000, np.uint16))), "c.png")
    with pytest.raises(R2GError, match="d.png: not a readable image"):
        decode_xray(b"%PDF-1.4 not an image", "d.png")
    ok = decode_xray(png(Image.new("L", (30, 20), 9)), "e.png")
    assert ok.image.size == (30, 20) and ok.source == {"file": "e.png", "format": "png"}


def test_shard_converts_dicom_views_and_records_the_frame(tmp_path):
    raw = write_raw_dataset(tmp_path / "raw", per_split=(2, 1, 1), size=16)
    images = raw.parent / "images"
    ann = json.loads(raw.read_text())
    entry = ann["train"][0]
    png = chest_like(2, (16, 24))
    save(radiograph_from_png(png), images / entry["id"] / "0.dcm")
    entry["image_path"][0] = f"{entry['id']}/0.dcm"
    raw.write_text(json.dumps(ann))
    manifest = shard_dataset(raw, images, tmp_path / "shards", ShardOptions("iu_xray"))
    assert manifest["bad"]["count"] == 0
    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    meta = json.loads(members[f"{entry['id']}.json"])
    assert meta["images"][0] == "0.png" and meta["dicom_frames"] == {"0.png": 0}
    assert meta["source_images"][0].endswith("0.dcm")
    stored = np.asarray(Image.open(io.BytesIO(members[f"{entry['id']}.0.png"])))
    assert np.array_equal(stored, equalize_hist(png))

    (images / entry["id"] / "0.dcm").write_bytes(dicom_bytes(dataset(np.zeros((2, 4, 4), np.uint16))))
    with pytest.raises(R2GError, match="undecodable DICOM.*0.dcm: a multi-frame DICOM"):
        shard_dataset(raw, images, tmp_path / "shards2", ShardOptions("iu_xray"))
