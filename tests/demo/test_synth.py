"""Synthetic chest X-ray data: deterministic, R2Gen layout, and labels that agree with both the report
text and the pixels (a model must be able to learn the findings from the image)."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from r2g.data.reports import clean_report
from r2g.demo import synth
from r2g.errors import R2GError
from r2g.labels import CHEXPERT_LABELS

SIZE = 224  # the vision encoder's input size: findings must be visible here

# ---- report text ---------------------------------------------------------------------------------

# Words that mention each label. As in CheXpert, Lung Opacity comes from opacity words and consolidation;
# edema and atelectasis set it only when their sentence says "opacity" (or "infiltrate", "airspace").
MENTIONS = {
    "Enlarged Cardiomediastinum": ("mediastin",),
    "Cardiomegaly": ("heart", "cardiac", "cardiomegaly"),
    "Lung Opacity": ("opacit", "airspace", "consolidat", "infiltrat"),
    "Lung Lesion": ("nodule", "mass"),
    "Edema": ("edema",),
    "Consolidation": ("consolidat",),
    "Pneumonia": ("pneumonia",),
    "Atelectasis": ("atelecta",),
    "Pneumothorax": ("pneumothora",),
    "Pleural Effusion": ("effusion", "costophrenic"),
    "Pleural Other": ("pleural thickening", "pleural plaque"),
    "Fracture": ("fracture",),
    "Support Devices": ("tube", "catheter", "central line", "pacemaker", "support device"),
}
OWN_WORDS = {**MENTIONS, "Lung Opacity": ("opacit", "airspace")}  # words only that label uses
NEGATION = re.compile(r"\bno\b|without|negative for|normal|intact|unremarkable|clear|sharp")
HEDGE = re.compile(r"possib|\bmay\b|cannot be excluded|borderline|questionable")
FINDING_WORDS = {  # the words naming each finding, for the laterality check
    "effusion": "effusion", "pneumothorax": "pneumothora", "consolidation": "consolidat",
    "atelectasis": "atelecta", "lesion": ("nodule", "mass"), "fracture": "fracture",
}


def sentences(report: str) -> list[str]:
    return [s.lower() for s in re.split(r"(?<=[.;])\s+|\n+", report) if s.strip()]


def mentions(sentence: str, words) -> bool:
    return any(w in sentence for w in ((words,) if isinstance(words, str) else words))


def classify(report: str, label: str) -> set[str]:
    """How the report mentions `label`: a subset of {"positive", "hedged", "negated"}."""
    found = set()
    for s in sentences(report):
        if mentions(s, MENTIONS[label]):
            found.add("hedged" if HEDGE.search(s) else "negated" if NEGATION.search(s) else "positive")
    return found


@pytest.fixture(scope="module")
def studies():
    """1200 sampled studies per style with their reports (no pixels: sampling and wording are cheap)."""
    out = []
    for style in synth.STYLES:
        for index in range(1200):
            study = synth.sample_study(7, index, style)
            out.append((study, *synth.write_report(study)))
    return out


def test_labels_agree_with_report_text(studies):
    for study, report, labels in studies:
        assert set(labels) == set(CHEXPERT_LABELS)
        for label, value in labels.items():
            if label == "No Finding":
                continue
            how = classify(report, label)
            context = f"{study.study_id} {label}={value}: {report}"
            if value == 1:
                assert "positive" in how, context
            elif value == -1:
                assert "hedged" in how and "positive" not in how, context
            elif value == 0:
                assert how == {"negated"}, context
            else:
                assert not any(mentions(s, OWN_WORDS[label]) for s in sentences(report)), context


def test_no_finding_follows_chexpert_rule(studies):
    seen = Counter()
    for _, _, labels in studies:
        others = [v for k, v in labels.items() if k not in ("No Finding", "Support Devices")]
        expected = 1 if not any(v in (1, -1) for v in others) else None
        assert labels["No Finding"] == expected
        seen[expected, labels["Support Devices"]] += 1
    assert seen[1, 1] > 0  # a normal study with only devices still counts as "No Finding"


def test_findings_labelled_and_worded_as_drawn(studies):
    """Every drawn finding sets its labels (1 clear, -1 faint) and is described on the drawn side."""
    for study, report, labels in studies:
        for f in study.findings:
            own, *shared = synth.FINDING_LABELS[f.kind]  # shared: Lung Opacity, also set by others
            assert labels[own] == (1 if f.certain else -1), (f, labels)
            assert all(labels[label] in ((1,) if f.certain else (1, -1)) for label in shared), (f, labels)
            if f.kind in FINDING_WORDS and f.side in ("right", "left"):
                about = [s for s in sentences(report) if mentions(s, FINDING_WORDS[f.kind])]
                assert about and all(f.side in s for s in about), (f, report)
        drawn = {label for f in study.findings for label in synth.FINDING_LABELS[f.kind]}
        present = {k for k, v in labels.items() if v in (1, -1)} - {"No Finding"}
        assert drawn <= present and present - drawn <= {"Lung Opacity"}, (drawn, present)
        if "Lung Opacity" in present - drawn:  # only from a drawn finding described as an opacity
            assert synth._OPACITY_WORDS.search(report), report


def test_prevalence_and_variety(studies):
    for style in synth.STYLES:
        subset = [(s, r, lab) for s, r, lab in studies if s.style == style]
        normal = sum(not s.findings for s, _, _ in subset) / len(subset)
        assert 0.33 <= normal <= 0.48, (style, normal)
        kinds = Counter(f.kind for s, _, _ in subset for f in s.findings)
        for kind, p in synth.PREVALENCE[style].items():
            assert abs(kinds[kind] / len(subset) - p) < 0.04, (style, kind)
        certain = [f.certain for s, _, _ in subset for f in s.findings if f.kind != "devices"]
        assert 0.12 < 1 - np.mean(certain) < 0.28  # ~FAINT_RATE drawn faintly and hedged
        # Reports differ: no template dominates, so text alone cannot score well.
        top_count = Counter(r for _, r, _ in subset).most_common(1)[0][1]
        assert top_count < 0.03 * len(subset)
        assert all(r.strip() and clean_report(r, "mimic_cxr" if style == "mimic" else "iu_xray") for _, r, _ in subset)
    single = [s.views == 1 for s, _, _ in studies if s.style == "iu-xray"]
    assert 0.05 < np.mean(single) < 0.16
    assert all(s.views == 1 for s, _, _ in studies if s.style == "mimic")
    mimic_reports = [r for s, r, _ in studies if s.style == "mimic"]
    assert any(r.startswith("FINDINGS:") and "\n\nIMPRESSION: " in r for r in mimic_reports)
    assert any("FINDINGS:" not in r for r in mimic_reports)


# ---- pixels ---------------------------------------------------------------------------------------

def find(style: str, kind: str, n: int, certain: bool = True, alone: bool = False, seed: int = 11):
    """The first `n` studies with finding `kind` (optionally as their only finding)."""
    out = []
    for index in range(5000):
        study = synth.sample_study(seed, index, style)
        f = study.finding(kind)
        if f and f.certain == certain and (not alone or len(study.findings) == 1):
            out.append(study)
            if len(out) == n:
                return out
    raise AssertionError(f"not enough {kind} studies")


def without(study, kind: str):
    return replace(study, findings=tuple(f for f in study.findings if f.kind != kind))


def frontal(study) -> np.ndarray:
    return synth.render_frontal(study, SIZE).astype(np.float32)


def costophrenic_roi(a, side: str) -> np.ndarray:
    """Lung pixels in the lateral costophrenic recess of `side`."""
    X, Y = np.meshgrid((np.arange(SIZE) + 0.5) / SIZE, (np.arange(SIZE) + 0.5) / SIZE)
    x, y = synth.costophrenic_angle(a, side)
    return (synth.lung_mask(a, SIZE) > 0.5) & (np.abs(X - x) < 0.09) & (Y > y - 0.07)


def auc(pos, neg) -> float:
    return float(np.mean([[p > q for q in neg] for p in pos]))


def test_effusion_brightens_its_costophrenic_angle():
    normals = [s for s in (synth.sample_study(11, i, "mimic") for i in range(200)) if not s.findings][:25]
    effusions = find("mimic", "effusion", 25)

    def score(study, side):  # recess brightness relative to the same lung's mid zone
        img, a = frontal(study), study.anatomy
        x, y = synth.costophrenic_angle(a, side)
        mid = img[int((a.apex_y + y) / 2 * SIZE), int((a.cx + 0.7 * (x - a.cx)) * SIZE)]
        return img[costophrenic_roi(a, side)].mean() - mid

    sides = lambda s: ("right", "left") if s.finding("effusion").side == "bilateral" else (s.finding("effusion").side,)
    pos = [score(s, side) for s in effusions for side in sides(s)]
    neg = [score(s, side) for s in normals for side in ("right", "left")]
    assert auc(pos, neg) > 0.95
    for study in effusions:  # paired: same patient without the fluid
        f = study.finding("effusion")
        gain = {side: frontal(study)[costophrenic_roi(study.anatomy, side)].mean()
                - frontal(without(study, "effusion"))[costophrenic_roi(study.anatomy, side)].mean()
                for side in ("right", "left")}
        for side in sides(study):
            assert gain[side] > 25, (f, gain)
        if f.side != "bilateral":
            assert gain[{"right": "left", "left": "right"}[f.side]] < 2
    for study in find("mimic", "effusion", 8, certain=False):  # faint: hedged, still visible
        roi = costophrenic_roi(study.anatomy, sides(study)[0])
        assert frontal(study)[roi].mean() - frontal(without(study, "effusion"))[roi].mean() > 8


def heart_width_ratio(study) -> float:
    """Cardiothoracic ratio measured from pixels: the bright span around the heart centre on a row
    through the heart's widest visible part, over the thorax width."""
    a = study.anatomy
    img = frontal(study)
    row = int((a.heart_cy - 0.3 * a.heart_hh) * SIZE)
    profile = img[row - 1:row + 2].mean(axis=0)
    centre = int(a.heart_cx * SIZE)
    lungs = profile[(synth.lung_mask(a, SIZE)[row] > 0.9) & (np.abs(np.arange(SIZE) - centre) > 0.25 * SIZE)]
    threshold = (np.median(lungs) + profile[centre]) / 2
    left = right = centre
    while left > 0 and profile[left - 1] > threshold:
        left -= 1
    while right < SIZE - 1 and profile[right + 1] > threshold:
        right += 1
    return (right - left + 1) / (2 * a.hemi_w * SIZE)


def test_cardiomegaly_widens_the_heart():
    normals = [s for s in (synth.sample_study(11, i, "iu-xray") for i in range(200)) if not s.findings][:20]
    enlarged = find("iu-xray", "cardiomegaly", 20, alone=True)
    pos = [heart_width_ratio(s) for s in enlarged]
    neg = [heart_width_ratio(s) for s in normals]
    assert min(pos) > 0.54 and max(neg) < 0.52, (sorted(pos), sorted(neg))
    for study, measured in zip(enlarged, pos):
        assert abs(measured - study.anatomy.ctr) < 0.05
    # Lateral view: the enlarged heart fills more of the chest than the same patient's normal heart.
    for study in enlarged[:5]:
        normal = replace(without(study, "cardiomegaly"), anatomy=replace(study.anatomy, ctr=0.44))
        x, y, hw, hh = synth.lateral_heart(study.anatomy)
        cols = slice(int((x + 0.3 * hw) * SIZE), int((x + hw) * SIZE))
        band = slice(int((y - 0.5 * hh) * SIZE), int(y * SIZE))
        big, small = (synth.render_lateral(s, SIZE)[band, cols].astype(float).mean() for s in (study, normal))
        assert big - small > 15


def side_changes(study, kind) -> tuple[float, float]:
    """Mean |change| on the patient's right and left halves when `kind` is removed."""
    diff = np.abs(frontal(study) - frontal(without(study, kind)))
    half = int(study.anatomy.cx * SIZE)
    return diff[:, :half].mean(), diff[:, half:].mean()  # patient's right is on the image left


@pytest.mark.parametrize("kind", ["pneumothorax", "consolidation", "lesion", "atelectasis", "fracture"])
def test_unilateral_findings_drawn_on_their_side(kind):
    for study in find("mimic", kind, 6):
        f = study.finding(kind)
        if f.side == "bilateral":
            continue
        right, left = side_changes(study, kind)
        drawn, other = (right, left) if f.side == "right" else (left, right)
        assert drawn > 0.05 and other < 0.15 * drawn, (f, right, left)


def test_local_findings_are_conspicuous():
    for study in find("mimic", "lesion", 8):  # nodules and masses: bright disc at the sampled spot
        g = study.finding("lesion").geo
        y, x = int(g["y"] * SIZE), int(g["x"] * SIZE)
        assert (frontal(study) - frontal(without(study, "lesion")))[y - 1:y + 2, x - 1:x + 2].mean() > 40
    for study in find("mimic", "consolidation", 8):
        g = study.finding("consolidation").geo
        y, x, r = int(g["y"] * SIZE), int(g["x"] * SIZE), max(2, int(0.5 * g["r"] * SIZE))
        assert (frontal(study) - frontal(without(study, "consolidation")))[y - r:y + r, x - r:x + r].mean() > 30
    for study in find("mimic", "pneumothorax", 8):  # collapsed lung: a darker rim without markings
        assert (frontal(study) - frontal(without(study, "pneumothorax"))).min() < -20
    for study in find("mimic", "fracture", 8):  # a broken rib changes a small, bounded area
        changed = np.abs(frontal(study) - frontal(without(study, "fracture"))) > 12
        assert 5 < changed.sum() < 0.01 * SIZE * SIZE


def test_edema_is_bilateral_perihilar():
    for study in find("mimic", "edema", 6):
        a = study.anatomy
        gain = frontal(study) - frontal(without(study, "edema"))
        rows = slice(int((a.carina_y + 0.04) * SIZE), int((a.carina_y + 0.14) * SIZE))
        for sign in (-1, 1):  # a box lateral to each hilum
            cols = slice(*sorted(int((a.cx + sign * u) * SIZE) for u in (0.1, 0.16)))
            assert gain[rows, cols].mean() > 12


def test_devices_are_bright_lines_and_boxes():
    for study in find("mimic", "devices", 12):
        g = study.finding("devices").geo
        img, bare = frontal(study), frontal(without(study, "devices"))
        assert ((img - bare) > 40).sum() > 60
        if "pacer" in g:  # the generator is near-white and on the stated side
            box_x = study.anatomy.cx + (1 if g["pacer"] == "left" else -1) * (study.anatomy.hemi_w - 0.06)
            y, x = int((study.anatomy.apex_y + 0.1) * SIZE), int(box_x * SIZE)
            assert img[y - 2:y + 3, x - 4:x + 5].mean() > 200


def test_lateral_view_shows_effusion():
    for study in find("iu-xray", "effusion", 6):
        a = study.anatomy
        y = synth.lateral_diaphragm_y(a, a.post_x)
        box = np.s_[int((y - 0.06) * SIZE):int(y * SIZE), int((a.post_x - 0.2) * SIZE):int((a.post_x - 0.08) * SIZE)]
        gain = synth.render_lateral(study, SIZE)[box].astype(float).mean() - \
            synth.render_lateral(without(study, "effusion"), SIZE)[box].astype(float).mean()
        assert gain > 10


# ---- generate(): files, layout, determinism -----------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = {}
    for style in synth.STYLES:
        folder = tmp_path_factory.mktemp(style)
        out[style] = (folder, synth.generate(folder, 50, style=style, seed=5, image_size=96, workers=1))
    return out


@pytest.mark.parametrize("style", synth.STYLES)
def test_layout(generated, style):
    folder, summary = generated[style]
    annotation = json.loads((folder / "annotation.json").read_text())
    assert list(annotation) == ["train", "val", "test"]
    assert {k: len(v) for k, v in annotation.items()} == {"train": 35, "val": 5, "test": 10} == summary["studies"]
    entries = [e for split in annotation.values() for e in split]
    assert len({e["id"] for e in entries}) == 50
    prefix = "s" if style == "mimic" else "CXR"
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
    if style == "mimic":
        assert views == {1: 50}
    else:
        assert set(views) == {1, 2} and views[2] > views[1]
    assert summary["images"] == sum(n * c for n, c in views.items())
    assert sum(summary["labels"]["Cardiomegaly"].values()) == 50


def test_split_counts():
    assert synth.split_counts(50) == {"train": 35, "val": 5, "test": 10}
    assert synth.split_counts(1) == {"train": 1, "val": 0, "test": 0}
    assert synth.split_counts(3) == {"train": 2, "val": 0, "test": 1}
    assert sum(synth.split_counts(997).values()) == 997


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deterministic_whatever_the_workers(tmp_path):
    synth.generate(tmp_path / "a", 16, style="iu-xray", seed=3, image_size=64, workers=2)
    synth.generate(tmp_path / "b", 16, style="iu-xray", seed=3, image_size=64, workers=1)
    synth.generate(tmp_path / "c", 16, style="iu-xray", seed=4, image_size=64, workers=1)
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
        synth.generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_output_path_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(R2GError, match="not a directory"):
        synth.generate(tmp_path / "taken", 2)
