"""Rendered images: each finding shows where and how the sampled study says (a model must be able to learn
the findings from the pixels)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from r2g.demo.render import lateral_diaphragm_y, lateral_heart, lung_mask, render_frontal, render_lateral
from r2g.demo.sample import costophrenic_angle, sample_study

SIZE = 224  # the vision encoder's input size: findings must be visible here


def find(style: str, kind: str, n: int, certain: bool = True, alone: bool = False, seed: int = 11):
    """The first `n` studies with finding `kind` (optionally as their only finding)."""
    out = []
    for index in range(5000):
        study = sample_study(seed, index, style)
        f = study.finding(kind)
        if f and f.certain == certain and (not alone or len(study.findings) == 1):
            out.append(study)
            if len(out) == n:
                return out
    raise AssertionError(f"not enough {kind} studies")


def without(study, kind: str):
    return replace(study, findings=tuple(f for f in study.findings if f.kind != kind))


def frontal(study) -> np.ndarray:
    return render_frontal(study, SIZE).astype(np.float32)


def costophrenic_roi(a, side: str) -> np.ndarray:
    """Lung pixels in the lateral costophrenic recess of `side`."""
    X, Y = np.meshgrid((np.arange(SIZE) + 0.5) / SIZE, (np.arange(SIZE) + 0.5) / SIZE)
    x, y = costophrenic_angle(a, side)
    return (lung_mask(a, SIZE) > 0.5) & (np.abs(X - x) < 0.09) & (Y > y - 0.07)


def auc(pos, neg) -> float:
    return float(np.mean([[p > q for q in neg] for p in pos]))


def test_effusion_brightens_its_costophrenic_angle():
    normals = [s for s in (sample_study(11, i, "mimic_cxr") for i in range(200)) if not s.findings][:25]
    effusions = find("mimic_cxr", "effusion", 25)

    def score(study, side):  # recess brightness relative to the same lung's mid zone
        img, a = frontal(study), study.anatomy
        x, y = costophrenic_angle(a, side)
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
    for study in find("mimic_cxr", "effusion", 8, certain=False):  # faint: hedged, still visible
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
    lungs = profile[(lung_mask(a, SIZE)[row] > 0.9) & (np.abs(np.arange(SIZE) - centre) > 0.25 * SIZE)]
    threshold = (np.median(lungs) + profile[centre]) / 2
    left = right = centre
    while left > 0 and profile[left - 1] > threshold:
        left -= 1
    while right < SIZE - 1 and profile[right + 1] > threshold:
        right += 1
    return (right - left + 1) / (2 * a.hemi_w * SIZE)


def test_cardiomegaly_widens_the_heart():
    normals = [s for s in (sample_study(11, i, "iu_xray") for i in range(200)) if not s.findings][:20]
    enlarged = find("iu_xray", "cardiomegaly", 20, alone=True)
    pos = [heart_width_ratio(s) for s in enlarged]
    neg = [heart_width_ratio(s) for s in normals]
    assert min(pos) > 0.54 and max(neg) < 0.52, (sorted(pos), sorted(neg))
    for study, measured in zip(enlarged, pos):
        assert abs(measured - study.anatomy.ctr) < 0.05
    # Lateral view: the enlarged heart fills more of the chest than the same patient's normal heart.
    for study in enlarged[:5]:
        normal = replace(without(study, "cardiomegaly"), anatomy=replace(study.anatomy, ctr=0.44))
        x, y, hw, hh = lateral_heart(study.anatomy)
        cols = slice(int((x + 0.3 * hw) * SIZE), int((x + hw) * SIZE))
        band = slice(int((y - 0.5 * hh) * SIZE), int(y * SIZE))
        big, small = (render_lateral(s, SIZE)[band, cols].astype(float).mean() for s in (study, normal))
        assert big - small > 15


def side_changes(study, kind) -> tuple[float, float]:
    """Mean |change| on the patient's right and left halves when `kind` is removed."""
    diff = np.abs(frontal(study) - frontal(without(study, kind)))
    half = int(study.anatomy.cx * SIZE)
    return diff[:, :half].mean(), diff[:, half:].mean()  # patient's right is on the image left


@pytest.mark.parametrize("kind", ["pneumothorax", "consolidation", "lesion", "atelectasis", "fracture"])
def test_unilateral_findings_drawn_on_their_side(kind):
    for study in find("mimic_cxr", kind, 6):
        f = study.finding(kind)
        if f.side == "bilateral":
            continue
        right, left = side_changes(study, kind)
        drawn, other = (right, left) if f.side == "right" else (left, right)
        assert drawn > 0.05 and other < 0.15 * drawn, (f, right, left)


def test_local_findings_are_conspicuous():
    for study in find("mimic_cxr", "lesion", 8):  # nodules and masses: bright disc at the sampled spot
        g = study.finding("lesion").geo
        y, x = int(g["y"] * SIZE), int(g["x"] * SIZE)
        assert (frontal(study) - frontal(without(study, "lesion")))[y - 1:y + 2, x - 1:x + 2].mean() > 40
    for study in find("mimic_cxr", "consolidation", 8):
        g = study.finding("consolidation").geo
        y, x, r = int(g["y"] * SIZE), int(g["x"] * SIZE), max(2, int(0.5 * g["r"] * SIZE))
        assert (frontal(study) - frontal(without(study, "consolidation")))[y - r:y + r, x - r:x + r].mean() > 30
    for study in find("mimic_cxr", "pneumothorax", 8):  # collapsed lung: a darker rim without markings
        assert (frontal(study) - frontal(without(study, "pneumothorax"))).min() < -20
    for study in find("mimic_cxr", "fracture", 8):  # a broken rib changes a small, bounded area
        changed = np.abs(frontal(study) - frontal(without(study, "fracture"))) > 12
        assert 5 < changed.sum() < 0.01 * SIZE * SIZE


def test_edema_is_bilateral_perihilar():
    for study in find("mimic_cxr", "edema", 6):
        a = study.anatomy
        gain = frontal(study) - frontal(without(study, "edema"))
        rows = slice(int((a.carina_y + 0.04) * SIZE), int((a.carina_y + 0.14) * SIZE))
        for sign in (-1, 1):  # a box lateral to each hilum
            cols = slice(*sorted(int((a.cx + sign * u) * SIZE) for u in (0.1, 0.16)))
            assert gain[rows, cols].mean() > 12


def test_devices_are_bright_lines_and_boxes():
    for study in find("mimic_cxr", "devices", 12):
        g = study.finding("devices").geo
        img, bare = frontal(study), frontal(without(study, "devices"))
        assert ((img - bare) > 40).sum() > 60
        if "pacer" in g:  # the generator is near-white and on the stated side
            box_x = study.anatomy.cx + (1 if g["pacer"] == "left" else -1) * (study.anatomy.hemi_w - 0.06)
            y, x = int((study.anatomy.apex_y + 0.1) * SIZE), int(box_x * SIZE)
            assert img[y - 2:y + 3, x - 4:x + 5].mean() > 200


def test_lateral_view_shows_effusion():
    for study in find("iu_xray", "effusion", 6):
        a = study.anatomy
        y = lateral_diaphragm_y(a, a.post_x)
        box = np.s_[int((y - 0.06) * SIZE):int(y * SIZE), int((a.post_x - 0.2) * SIZE):int((a.post_x - 0.08) * SIZE)]
        gain = render_lateral(study, SIZE)[box].astype(float).mean() - \
            render_lateral(without(study, "effusion"), SIZE)[box].astype(float).mean()
        assert gain > 10
