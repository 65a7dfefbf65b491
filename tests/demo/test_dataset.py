"""generate(): the R2Gen layout on disk, split sizes, determinism whatever the workers, and bad input."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from r2g.demo.dataset import generate, split_counts
from r2g.demo.sample import STYLES
from r2g.errors import R2GError
from r2g.labels import CHEXPERT_LABELS


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = {}
    for style in STYLES:
        folder = tmp_path_factory.mktemp(style)
        out[style] = (folder, generate(folder, 50, style=style, seed=5, image_size=96, workers=1))
    return out


@pytest.mark.parametrize("style", STYLES)
def test_layout(generated, style):
    folder, summary = generated[style]
    annotation = json.loads((folder / "annotation.json").read_text())
    assert list(annotation) == ["train", "val", "test"]
    assert {k: len(v) for k, v in annotation.items()} == {"train": 35, "val": 5, "test": 10} == summary["studies"]
    entries = [e for split in annotation.values() for e in split]
    assert len({e["id"] for e in entries}) == 50
    prefix = "s" if style == "mimic_cxr" else "CXR"
    views = Counter()
    for split, items in annotation.items():
        for e in items:
            assert list(e) == ["id", "report", "image_path", "split", "labels"]
            assert e["split"] == split and re.fullmatch(prefix + r"\d{5}", e["id"])
            assert e["report"] and list(e["labels"]) == list(CHEXPERT_LABELS)
            assert all(v in (1, 0, -1, None) for v in e["labels"].values())
            assert e["image_path"] == [f"{e['id']}/{i}.png" for i in range(len(e["image_path"]))]
            views[len(e["image_path"])] += 1
            for path in e["image_path"]:
                with Image.open(folder / "images" / path) as im:
                    assert im.format == "PNG" and im.mode == "L" and im.size == (96, 96)
    if style == "mimic_cxr":
        assert views == {1: 50}
    else:
        assert set(views) == {1, 2} and views[2] > views[1]
    assert summary["images"] == sum(n * c for n, c in views.items())
    assert sum(summary["labels"]["Cardiomegaly"].values()) == 50


def test_split_counts():
    assert split_counts(50) == {"train": 35, "val": 5, "test": 10}
    assert split_counts(1) == {"train": 1, "val": 0, "test": 0}
    assert split_counts(3) == {"train": 2, "val": 0, "test": 1}
    assert sum(split_counts(997).values()) == 997


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deterministic_whatever_the_workers(tmp_path):
    generate(tmp_path / "a", 16, style="iu_xray", seed=3, image_size=64, workers=2)
    generate(tmp_path / "b", 16, style="iu_xray", seed=3, image_size=64, workers=1)
    generate(tmp_path / "c", 16, style="iu_xray", seed=4, image_size=64, workers=1)
    a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert a == b
    assert a["annotation.json"] != c["annotation.json"]
    shared = set(a) & set(c) - {"annotation.json"}
    assert shared and all(a[p] != c[p] for p in shared)


@pytest.mark.parametrize("kwargs, match", [
    (dict(studies=10, style="chexpert"), "unknown synthetic data style 'chexpert'"),
    (dict(studies=0), "studies must be an integer >= 1"),
    (dict(studies=-3), "studies must be an integer >= 1"),
    (dict(studies="10"), "studies must be an integer >= 1"),
    (dict(studies=5, image_size=16), "image_size must be an integer between 64 and 1024"),
    (dict(studies=5, image_size=4096), "image_size must be an integer between 64 and 1024"),
    (dict(studies=5, seed=-1), "seed must be an integer >= 0"),
])
def test_bad_input(tmp_path, kwargs, match):
    with pytest.raises(R2GError, match=match):
        generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_output_path_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(R2GError, match="not a directory"):
        generate(tmp_path / "taken", 2)
