"""Synthetic chest X-ray studies that a report generator can actually learn from.

Each study is sampled once (`sample_study`: findings, anatomy, drawing geometry), then turned into
pixels (`render_frontal`, `render_lateral`) and words (`write_report`) from that same sample, so what
is drawn, what is written and the CheXpert labels always agree:

- a finding drawn clearly is stated positively and labelled 1;
- a finding drawn faintly is stated with hedging ("possible", "cannot be excluded") and labelled -1;
- an absent finding is sometimes negated ("No pneumothorax.") and then labelled 0, else left blank.

The report's informative content is its positive findings (side, zone, size words included), which
only the image can tell; the normal sentences vary at random, so a model that ignores the image
cannot score well.

Sides are the patient's: the patient's right lung is on the left of a frontal image.
Geometry is in normalised image coordinates (x right, y down, both 0..1) so it is resolution-free.
Every study draws from its own random streams keyed by (seed, stream, index, style), so results do
not depend on how studies are spread over worker processes.
"""

from __future__ import annotations

import re
import json
import math
import multiprocessing
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from r2g.errors import R2GError
from r2g.labels import CHEXPERT_LABELS

STYLES = ("mimic", "iu-xray")
SPLITS = ("train", "val", "test")
_TRAIN_FRACTION, _VAL_FRACTION = 0.7, 0.1

# Independent per-study prevalence. Their product leaves ~35-45 % of studies with no finding at all;
# MIMIC (ICU-heavy) has more devices, effusions and edema, IU-Xray (outpatient) more normals.
KINDS = ("cardiomegaly", "effusion", "pneumothorax", "consolidation", "edema",
         "atelectasis", "lesion", "fracture", "devices")
PREVALENCE = {
    "mimic": dict(cardiomegaly=0.15, effusion=0.16, pneumothorax=0.05, consolidation=0.10, edema=0.10,
                  atelectasis=0.10, lesion=0.06, fracture=0.04, devices=0.18),
    "iu-xray": dict(cardiomegaly=0.18, effusion=0.12, pneumothorax=0.04, consolidation=0.08, edema=0.07,
                    atelectasis=0.12, lesion=0.08, fracture=0.05, devices=0.08),
}
FAINT_RATE = 0.2  # share of (non-device) findings drawn faintly and reported with hedging
IU_SINGLE_VIEW_RATE = 0.1  # IU-Xray studies with only the frontal image

# The CheXpert labels each finding asserts (1 when drawn clearly, -1 when drawn faintly).
_OPACITY_WORDS = re.compile(r"opacit|infiltrat|airspace disease|air-space disease", re.IGNORECASE)

FINDING_LABELS = {
    "cardiomegaly": ("Cardiomegaly",),
    "effusion": ("Pleural Effusion",),
    "pneumothorax": ("Pneumothorax",),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "edema": ("Edema",),  # CheXpert labels Lung Opacity only when opacity-type words are written
    "atelectasis": ("Atelectasis",),
    "lesion": ("Lung Lesion",),
    "fracture": ("Fracture",),
    "devices": ("Support Devices",),
}

# Random streams of one study are keyed (seed, stream, index, style); the split shuffle is (seed, 0).
_STREAM_SPLIT, _STREAM_STUDY, _STREAM_FRONTAL, _STREAM_LATERAL, _STREAM_REPORT = 0, 1, 2, 3, 4

THORAX_CM = 30.0  # an adult thorax is ~30 cm wide: converts drawn sizes into the cm quoted in reports
_SIGN = {"right": -1.0, "left": 1.0}  # image-x direction of the patient's side


# ----------------------------------------------------------------------------------------------
# Sampling: what a study contains
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Anatomy:
    """Per-study body geometry and exposure (normalised coordinates)."""

    cx: float  # midline
    apex_y: float  # lung apices
    hemi_w: float  # midline to the lateral lung margin
    med_w: float  # half width of the mediastinum
    dome_y: dict  # side -> top of that hemidiaphragm
    dome_h: float  # drop from the dome top to the costophrenic angle
    ctr: float  # cardiothoracic ratio: heart width / thorax width (2 * hemi_w)
    heart_shift: float  # heart centre lies this many half-widths toward the patient's left
    heart_cy: float
    heart_hh: float
    carina_y: float
    rib_spacing: float
    ant_x: float  # lateral view: anterior chest wall
    post_x: float  # lateral view: posterior chest wall
    lung_level: float  # brightness of aerated lung
    tissue_level: float  # brightness of soft tissue
    gastric_bubble: bool
    gamma: float
    contrast: float
    brightness: float
    tilt: float  # exposure gradient across the detector
    blur: float  # Gaussian blur radius in pixels at 256 px
    noise: float

    @property
    def heart_hw(self) -> float:
        return self.ctr * self.hemi_w

    @property
    def heart_cx(self) -> float:
        return self.cx + self.heart_shift * self.heart_hw

    @property
    def lung_w(self) -> float:
        return self.hemi_w - self.med_w

    @property
    def cm_per_unit(self) -> float:
        return THORAX_CM / (2 * self.hemi_w)


@dataclass(frozen=True)
class Finding:
    """One sampled abnormality: the words the report uses and the numbers the drawing uses."""

    kind: str  # one of KINDS
    certain: bool  # False: drawn faintly, hedged in the report, labelled -1
    side: str = ""  # "right" | "left" | "bilateral" (patient's side)
    zone: str = ""  # "upper" | "mid" | "lower"
    grade: str = ""  # size / severity / type word used in the report
    geo: dict = field(default_factory=dict)  # drawing geometry, normalised coordinates


@dataclass(frozen=True)
class Study:
    seed: int
    index: int
    style: str
    anatomy: Anatomy
    findings: tuple[Finding, ...]
    views: int  # 1: frontal only; 2: frontal + lateral

    @property
    def study_id(self) -> str:
        return f"{'s' if self.style == 'mimic' else 'CXR'}{self.index:05d}"

    def finding(self, kind: str) -> Finding | None:
        return next((f for f in self.findings if f.kind == kind), None)


def _rng(seed: int, stream: int, index: int, style: str) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index, STYLES.index(style)])


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def sample_study(seed: int, index: int, style: str) -> Study:
    """Everything random about study `index` except pixel texture and wording."""
    rng = _rng(seed, _STREAM_STUDY, index, style)
    present = rng.random(len(KINDS)) < np.array([PREVALENCE[style][k] for k in KINDS])
    faint = rng.random(len(KINDS)) < FAINT_RATE
    certain = {k: not f or k == "devices" for k, f, p in zip(KINDS, faint, present) if p}  # devices: never hedged
    # Heart size is part of the anatomy, so cardiomegaly is sampled first; the other findings are
    # placed inside that anatomy.
    cardio = _sample_cardiomegaly(rng, certain["cardiomegaly"]) if "cardiomegaly" in certain else None
    anatomy = _sample_anatomy(rng, ctr=cardio.geo["ctr"] if cardio else rng.uniform(0.40, 0.48))
    findings = [cardio] if cardio else []
    findings += [_SAMPLERS[k](rng, anatomy, certain[k], style) for k in KINDS[1:] if k in certain]
    views = 1 if style == "mimic" or rng.random() < IU_SINGLE_VIEW_RATE else 2
    return Study(seed, index, style, anatomy, tuple(findings), views)


def _sample_anatomy(rng: np.random.Generator, ctr: float) -> Anatomy:
    u = rng.uniform
    apex_y = u(0.09, 0.16)
    dome_r = apex_y + u(0.56, 0.64)
    dome_l = dome_r + u(0.01, 0.04)  # the right hemidiaphragm usually sits higher
    return Anatomy(
        cx=0.5 + u(-0.03, 0.03), apex_y=apex_y, hemi_w=u(0.32, 0.39), med_w=u(0.045, 0.065),
        dome_y={"right": dome_r, "left": dome_l}, dome_h=u(0.06, 0.10), ctr=ctr,
        # The heart's lower half merges with the diaphragm; only its upper outline shows against the lungs.
        heart_shift=u(0.3, 0.45), heart_cy=(dome_r + dome_l) / 2 - u(0.04, 0.07), heart_hh=u(0.14, 0.17),
        carina_y=apex_y + u(0.17, 0.22), rib_spacing=(dome_r - apex_y) / u(8.0, 9.0),
        ant_x=u(0.15, 0.22), post_x=u(0.80, 0.87),
        lung_level=u(0.10, 0.17), tissue_level=u(0.36, 0.46), gastric_bubble=bool(rng.random() < 0.6),
        gamma=u(0.8, 1.25), contrast=u(0.85, 1.15), brightness=u(-0.05, 0.05), tilt=u(-0.05, 0.05),
        blur=u(0.5, 1.0), noise=u(0.006, 0.018),
    )


def _side(rng: np.random.Generator, bilateral: float = 0.0) -> str:
    return "bilateral" if rng.random() < bilateral else _choice(rng, ("right", "left"))


_ZONES = {"upper": (0.05, 0.3), "mid": (0.35, 0.6), "lower": (0.65, 1.0)}  # fractions of apex→diaphragm


def _lung_point(rng: np.random.Generator, a: Anatomy, side: str, zone: str, margin: float) -> tuple[float, float]:
    """A point in `zone` of one lung, `margin` inside the lung and clear of the heart, so that what is
    drawn there is visible. Rejection sampling; the margin shrinks when nothing fits (a large mass in
    a small lung zone)."""
    for m in (margin, margin / 2, 0.0):
        for _ in range(80):
            u = a.med_w + a.lung_w * rng.uniform(0.1, 0.9)
            top, bottom = a.apex_y + 0.04, diaphragm_y(a, side, u) - 0.02
            y = top + (bottom - top) * rng.uniform(*_ZONES[zone])
            x = a.cx + _SIGN[side] * u
            if _visible_in_lung(a, side, x, y, m):
                return x, y
    return x, y


def _visible_in_lung(a: Anatomy, side: str, x: float, y: float, margin: float) -> bool:
    """(x, y) lies `margin` inside the lung outline, above the diaphragm and outside the heart."""
    u, half = abs(x - a.cx), a.lung_w / 2
    yc = a.dome_y[side] + 0.03
    in_lung = ((u - a.med_w - half) / (half - margin)) ** 2 + ((y - yc) / (yc - a.apex_y - margin)) ** 2 < 1
    above_diaphragm = y < diaphragm_y(a, side, u) - margin
    off_heart = ((x - a.heart_cx) / (a.heart_hw + margin)) ** 2 + ((y - a.heart_cy) / (a.heart_hh + margin)) ** 2 > 1
    return in_lung and above_diaphragm and off_heart


def _sample_cardiomegaly(rng, certain: bool) -> Finding:
    if not certain:  # borderline heart size
        return Finding("cardiomegaly", False, grade="borderline", geo={"ctr": rng.uniform(0.52, 0.55)})
    grade = _choice(rng, ("mild", "moderate", "marked"))
    ctr = rng.uniform(*{"mild": (0.57, 0.60), "moderate": (0.60, 0.65), "marked": (0.65, 0.71)}[grade])
    return Finding("cardiomegaly", True, grade=grade, geo={"ctr": ctr})


def _sample_effusion(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side = _side(rng, bilateral=0.35)
    if not certain:
        return Finding("effusion", False, side=side, grade="trace", geo={"depth": rng.uniform(0.05, 0.07)})
    grade = _choice(rng, ("small", "small", "moderate", "large"))
    depth = rng.uniform(*{"small": (0.08, 0.12), "moderate": (0.14, 0.21), "large": (0.24, 0.32)}[grade])
    return Finding("effusion", True, side=side, grade=grade, geo={"depth": depth})


def _sample_pneumothorax(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side = _side(rng)
    if not certain:  # tiny apical: the apex drops a little, the lateral margin barely moves
        return Finding("pneumothorax", False, side=side, grade="tiny",
                       geo={"k_lat": rng.uniform(0.96, 0.98), "k_top": rng.uniform(0.88, 0.92)})
    grade = _choice(rng, ("small", "moderate", "large"))
    k = rng.uniform(*{"small": (0.82, 0.87), "moderate": (0.70, 0.76), "large": (0.56, 0.63)}[grade])
    return Finding("pneumothorax", True, side=side, grade=grade, geo={"k_lat": k, "k_top": k})


def _sample_consolidation(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side, zone = _side(rng), _choice(rng, ("upper", "lower", "lower"))
    radius = rng.uniform(0.06, 0.09) if certain else rng.uniform(0.045, 0.06)
    x, y = _lung_point(rng, a, side, zone, margin=radius * 0.6)
    grade = _choice(rng, ("focal", "patchy", "dense")) if certain else "subtle"
    return Finding("consolidation", certain, side=side, zone=zone, grade=grade,
                   geo={"x": x, "y": y, "r": radius, "depth": rng.uniform(0.3, 0.7),
                        "seed": int(rng.integers(2**31))})


def _sample_edema(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    grade = _choice(rng, ("mild", "moderate")) if certain else "mild"
    alpha = {"mild": 0.45, "moderate": 0.6}[grade] if certain else 0.22
    return Finding("edema", certain, side="bilateral", grade=grade,
                   geo={"alpha": alpha, "seed": int(rng.integers(2**31))})


def _sample_atelectasis(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side = _side(rng, bilateral=0.3)
    grade = _choice(rng, ("linear", "plate-like", "subsegmental"))
    bands = []
    for s in ("right", "left") if side == "bilateral" else (side,):
        half = rng.uniform(0.04, 0.07)
        x, y = _lung_point(rng, a, s, "lower", margin=0.05)
        angle = math.radians(rng.uniform(-12, 12))
        dx, dy = half * math.cos(angle), half * math.sin(angle)
        bands.append((x - dx, y - dy, x + dx, y + dy))
    return Finding("atelectasis", certain, side=side, zone="lower", grade=grade,
                   geo={"bands": bands, "thick": rng.uniform(0.008, 0.013), "alpha": 0.75 if certain else 0.4})


def _sample_lesion(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side, zone = _side(rng), _choice(rng, ("upper", "mid", "lower"))
    if not certain:
        radius = rng.uniform(0.011, 0.016)
    elif rng.random() < 0.35:
        radius = rng.uniform(0.045, 0.075)
    else:
        radius = rng.uniform(0.015, 0.03)
    cm = round(2 * radius * a.cm_per_unit, 1)
    x, y = _lung_point(rng, a, side, zone, margin=radius)
    return Finding("lesion", certain, side=side, zone=zone, grade="mass" if cm >= 3.0 else "nodule",
                   geo={"x": x, "y": y, "r": radius, "cm": cm, "depth": rng.uniform(0.3, 0.7),
                        "lobes": rng.uniform(0, 2 * math.pi)})


def _sample_fracture(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side = _side(rng)
    u = a.med_w + a.lung_w * rng.uniform(0.55, 0.9)
    rib = int(rng.integers(3, 9))  # rib number (1 = the rib at the apex)
    while rib > 3 and rib_y(a, rib, u) > diaphragm_y(a, side, u) - 0.03:
        rib -= 1  # keep the break above the diaphragm, where the rib is visible
    return Finding("fracture", certain, side=side, grade="displaced" if certain else "nondisplaced",
                   geo={"rib": rib, "u": u, "step": 0.3 * a.rib_spacing if certain else 0.0,
                        "gap": 0.011 if certain else 0.006})


def _sample_devices(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    """Any non-empty combination of endotracheal tube, central line and pacemaker (ICU lines for MIMIC)."""
    p_ett, p_line = (0.55, 0.6) if style == "mimic" else (0.15, 0.35)
    geo = {}
    while not geo:
        if rng.random() < p_ett:
            geo["ett_cm"] = round(rng.uniform(2.5, 6.0) * 2) / 2
        if rng.random() < p_line:
            geo["line"] = _choice(rng, ("right internal jugular", "right internal jugular", "left subclavian"))
            geo["line_tip"] = _choice(rng, ("mid SVC", "lower SVC", "cavoatrial junction"))
        if rng.random() < 0.45:
            geo["pacer"] = "left" if rng.random() < 0.85 else "right"
            geo["leads"] = 2 if rng.random() < 0.7 else 1
    return Finding("devices", True, geo=geo)


_SAMPLERS = {
    "effusion": _sample_effusion, "pneumothorax": _sample_pneumothorax, "consolidation": _sample_consolidation,
    "edema": _sample_edema, "atelectasis": _sample_atelectasis, "lesion": _sample_lesion,
    "fracture": _sample_fracture, "devices": _sample_devices,
}


# ----------------------------------------------------------------------------------------------
# Geometry shared by drawing, sampling and tests
# ----------------------------------------------------------------------------------------------

def diaphragm_y(a: Anatomy, side, u):
    """Height of the hemidiaphragm at distance `u` from the midline: a dome peaking medially that falls
    steeply to the costophrenic angle at the lateral lung margin. `side` may be a per-pixel dome array."""
    dome = a.dome_y[side] if isinstance(side, str) else side
    peak = a.med_w + 0.35 * a.lung_w
    t = (u - peak) / (a.hemi_w - peak)
    return dome + a.dome_h * t * t


def costophrenic_angle(a: Anatomy, side: str) -> tuple[float, float]:
    """(x, y) of the lateral costophrenic angle, where effusions collect first."""
    return a.cx + _SIGN[side] * a.hemi_w, a.dome_y[side] + a.dome_h


def rib_y(a: Anatomy, rib, u):
    """Centre line of posterior rib `rib` (1 = apex) at distance `u` from the midline: rising from the
    spine and curving down laterally, as posterior ribs do on a frontal film."""
    return a.apex_y - 0.02 + (rib - 1) * a.rib_spacing - 0.6 * u + 2.2 * u * u


def _ring(rib_phase):
    """Bright bands where the rib phase is near an integer: all ribs in one vectorised expression."""
    return np.sqrt(np.clip((np.cos(2 * np.pi * rib_phase) - 0.3) / 0.7, 0, 1))


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as a (1, size) row X and a (size, 1) column Y.

    Broadcasting keeps every expression in one coordinate 1-D (cheap) and only mixed ones 2-D, which
    is what makes rendering fast enough: most shapes here are separable sums or products.
    """
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    X, Y = c[None, :].copy(), c[:, None].copy()
    X.flags.writeable = Y.flags.writeable = False
    return X, Y


def _gauss(d, sigma):
    return np.exp(-((d / sigma) ** 2))


def _dist(dx, dy):
    """Euclidean length; several times faster than np.hypot on float32 grids."""
    return np.sqrt(dx * dx + dy * dy)


def _soft(x, width):
    """0 -> 1 ramp over `width` around x = 0: anti-aliased, slightly soft edges."""
    return np.clip(x / width + 0.5, 0, 1)


def _segment_distance(X, Y, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
    return _dist(X - x0 - t * dx, Y - y0 - t * dy)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise with blobs about size/cells pixels wide: a random window of a cached bank."""
    y0, x0 = rng.integers(0, size, 2)
    return _smooth_bank(size, cells)[y0:y0 + size, x0:x0 + size]


@lru_cache(maxsize=16)
def _smooth_bank(size: int, cells: int) -> np.ndarray:
    """Bicubically upsampled Gaussian noise, twice the image size (computed once per process)."""
    coarse = np.random.default_rng(cells).standard_normal((2 * cells, 2 * cells), dtype=np.float32)
    return np.asarray(Image.fromarray(coarse).resize((2 * size, 2 * size), Image.BICUBIC))


def _box(X, Y, x0: float, y0: float, x1: float, y1: float):
    """The part of the grid inside a normalised box: small features are computed only there.
    Returns (window for indexing the image, X and Y restricted to it)."""
    size = X.shape[1]
    cols = slice(min(size, max(0, int(x0 * size))), min(size, max(0, math.ceil(x1 * size))))
    rows = slice(min(size, max(0, int(y0 * size))), min(size, max(0, math.ceil(y1 * size))))
    return (rows, cols), X[:, cols], Y[rows]


def _blend(img, mask, level):
    """Replace `img` by `level` where `mask` is 1 (in place): opacities hide what lies behind them."""
    img += mask * (level - img)


@dataclass
class _Frame:
    """Per-pixel fields of one frontal image that several drawing steps need."""

    X: np.ndarray
    Y: np.ndarray
    u: np.ndarray  # distance from the midline (both sides at once: the thorax is near-symmetric)
    right: np.ndarray  # pixel lies on the patient's right (image left)
    dome: np.ndarray  # that side's dome height
    lung: np.ndarray  # soft mask of both lungs (including the parts behind the heart)
    heart: np.ndarray  # soft mask of the heart where it shows (above the diaphragm)

    def side_lung(self, side: str) -> np.ndarray:
        return self.lung * (self.right if side == "right" else ~self.right)


def _lung_ellipse(a: Anatomy, u, Y, dome, k_lat: float = 1.0, k_top: float = 1.0):
    """Ellipse value (<1 inside) of the lung outline: a tall half-ellipse from the mediastinum to the
    lateral margin. k_lat / k_top shrink it toward the hilum (a lung collapsed by a pneumothorax)."""
    half = a.lung_w / 2 * k_lat
    yc = dome + 0.03
    return ((u - a.med_w - half) / half) ** 2 + ((Y - yc) / ((yc - a.apex_y) * k_top)) ** 2


def _frontal_frame(a: Anatomy, size: int) -> _Frame:
    X, Y = _grid(size)
    u = np.abs(X - a.cx)
    right = X < a.cx
    dome = np.where(right, np.float32(a.dome_y["right"]), np.float32(a.dome_y["left"]))
    inside = _soft(1 - _lung_ellipse(a, u, Y, dome), 0.1)
    diaphragm = diaphragm_y(a, dome, u)
    heart = _soft(1 - ((X - a.heart_cx) / a.heart_hw) ** 2 - ((Y - a.heart_cy) / a.heart_hh) ** 2, 0.12)
    return _Frame(X, Y, u, right, dome, inside * _soft(diaphragm - Y, 0.008), heart * _soft(diaphragm - Y, 0.03))


def lung_mask(a: Anatomy, size: int) -> np.ndarray:
    """Soft (0..1) mask of both lung fields (behind the heart included) at `size` px."""
    return _frontal_frame(a, size).lung


# ----------------------------------------------------------------------------------------------
# Frontal view
# ----------------------------------------------------------------------------------------------

def render_frontal(study: Study, size: int) -> np.ndarray:
    """The PA/AP view as an 8-bit grayscale array (size x size)."""
    a = study.anatomy
    fr = _frontal_frame(a, size)
    tex = _rng(study.seed, _STREAM_FRONTAL, study.index, study.style)  # texture only: same draws whatever is found
    img = _frontal_anatomy(a, fr, tex, size)
    # Drawing order is physical: collapsed lung and parenchymal opacities first, bones over them,
    # pleural fluid over the ribs, devices on top.
    for kind in ("pneumothorax", "edema", "consolidation", "atelectasis", "lesion"):
        if f := study.finding(kind):
            _FRONTAL_FINDINGS[kind](img, f, a, fr, size)
    _frontal_bones(img, a, fr, study.finding("fracture"))
    if f := study.finding("effusion"):
        _frontal_effusion(img, f, a, fr)
    if f := study.finding("devices"):
        _overlay(img, _frontal_devices(f, a, size))
    return _expose(img, a, fr.X, tex, size)


def _frontal_anatomy(a: Anatomy, fr: _Frame, tex, size: int) -> np.ndarray:
    X, Y, u = fr.X, fr.Y, fr.u
    # Soft tissue: torso column, denser centrally and toward the abdomen; air outside.
    body_w = a.hemi_w + 0.05
    torso = _soft(body_w - u, 0.03)
    tissue = a.tissue_level + 0.08 * (1 - (u / body_w) ** 2) + 0.12 * np.clip((Y - fr.dome) / 0.1, 0, 1)
    img = (0.03 + torso * tissue).astype(np.float32)
    # Mediastinum and spine: bright central column.
    img += 0.12 * _soft(a.med_w - u, 0.012) + 0.10 * _soft(0.035 - u, 0.008) * (0.8 + 0.2 * np.cos(Y * 140))
    # Lungs: dark fields, denser toward the bases, with vessels radiating from the hila (streaks in
    # angle around the hilum, wiggled by noise so they branch and taper).
    hilum_y = a.carina_y + 0.08
    r_hilum = _dist(u - 0.09, Y - hilum_y)
    angle = np.arctan2(Y - hilum_y, u - 0.09)
    streaks = np.cos(angle * 30 + 3 * _smooth_noise(tex, size, 12)) + 0.6 * _smooth_noise(tex, size, 40)
    markings = np.clip(streaks, 0, None) * np.exp(-r_hilum / 0.13)
    base = a.lung_level + 0.06 * np.clip((Y - a.apex_y) / (fr.dome - a.apex_y), 0, 1)
    _blend(img, fr.lung, base + 0.07 * markings + 0.09 * _gauss(r_hilum, 0.035))
    # Heart, aortic knob, trachea and main bronchi.
    _blend(img, fr.heart, a.tissue_level + 0.16)
    kx, ky = a.cx + 0.045, a.apex_y + 0.14
    win, Xw, Yw = _box(X, Y, kx - 0.04, ky - 0.04, kx + 0.04, ky + 0.04)
    _blend(img[win], _soft(0.032 - _dist(Xw - kx, Yw - ky), 0.006), a.tissue_level + 0.17)
    win, Xw, Yw = _box(X, Y, a.cx - 0.09, 0, a.cx + 0.09, a.carina_y + 0.08)
    trachea = _soft(0.016 - np.abs(Xw - a.cx), 0.006) * (Yw < a.carina_y)
    bronchi = _segment_distance(np.abs(Xw - a.cx), Yw, 0.0, a.carina_y, 0.07, a.carina_y + 0.06)
    img[win] -= 0.12 * np.maximum(trachea, _soft(0.009 - bronchi, 0.005))
    if a.gastric_bubble:  # air in the stomach under the left hemidiaphragm
        bx, by = a.cx + 0.5 * a.hemi_w, a.dome_y["left"] + 0.075
        win, Xw, Yw = _box(X, Y, bx - 0.06, by - 0.03, bx + 0.06, by + 0.03)
        img[win] -= 0.15 * _soft(1 - ((Xw - bx) / 0.05) ** 2 - ((Yw - by) / 0.025) ** 2, 0.3)
    return img


def _frontal_bones(img, a: Anatomy, fr: _Frame, fracture: Finding | None):
    """Posterior ribs (all at once via a periodic phase), clavicles and humeral heads."""
    u, Y = fr.u, fr.Y
    phase = (Y - rib_y(a, 1, u)) / a.rib_spacing
    gap = 0.0
    if fracture:
        # A break in one rib: its lateral part is stepped down (displaced) and a lucent gap separates
        # the fragments. `near` confines the change to that rib.
        g = fracture.geo
        side = fr.right if fracture.side == "right" else ~fr.right
        near = np.clip(1.2 - np.abs(phase - (g["rib"] - 1)) * 1.5, 0, 1) * side
        phase = phase - near * (u > g["u"]) * (g["step"] / a.rib_spacing)
        gap = near * _gauss(u - g["u"], g["gap"])
    cage = _soft(1.15 - _lung_ellipse(a, u, Y, fr.dome), 0.2) * _soft(diaphragm_y(a, fr.dome, u) + 0.02 - Y, 0.02)
    img += (0.025 + 0.1 * fr.lung * (1 - fr.heart)) * cage * _ring(phase) * (1 - gap)
    # Clavicles and humeral heads, in a band across the top.
    win, Xw, Yw = _box(fr.X, Y, 0, a.apex_y - 0.09, 1, a.apex_y + 0.07)
    uw = np.abs(Xw - a.cx)
    clavicle = _segment_distance(uw, Yw, 0.03, a.apex_y + 0.045, a.hemi_w + 0.05, a.apex_y - 0.04)
    humerus = _dist(uw - a.hemi_w - 0.1, Yw - a.apex_y + 0.02)
    img[win] += 0.16 * _soft(0.014 - clavicle, 0.006) + 0.2 * _soft(0.06 - humerus, 0.01)


def _frontal_pneumothorax(img, f: Finding, a: Anatomy, fr: _Frame, size: int):
    """Lung collapsed toward the hilum: a dark rim without markings and a thin visceral pleural line."""
    lung = fr.side_lung(f.side)
    e = _lung_ellipse(a, fr.u, fr.Y, fr.dome, f.geo["k_lat"], f.geo["k_top"])
    _blend(img, lung * np.clip((e - 1) * 10, 0, 1), a.lung_level * 0.45)
    img += 0.22 * lung * _gauss(e - 1, 0.07)


def _frontal_edema(img, f: Finding, a: Anatomy, fr: _Frame, size: int):
    """Bilateral perihilar haze ("bat wing") plus prominent, indistinct vessels."""
    hilum_y = a.carina_y + 0.08
    haze = _gauss(fr.u - 0.1, 0.13) * _gauss(fr.Y - hilum_y, 0.17)
    vessels = np.clip(_smooth_noise(np.random.default_rng(f.geo["seed"]), size, 40), 0, None)
    _blend(img, fr.lung * f.geo["alpha"] * np.clip(haze * (0.8 + 0.4 * vessels), 0, 1), a.tissue_level + 0.1)


def _frontal_consolidation(img, f: Finding, a: Anatomy, fr: _Frame, size: int):
    """Dense patchy airspace opacity: a cluster of blobs broken up by noise, confined to the lung."""
    g = f.geo
    rng = np.random.default_rng(g["seed"])
    sigma = g["r"] * 0.78
    blobs = sum(_gauss(fr.X - g["x"] - dx, sigma) * _gauss(fr.Y - g["y"] - dy, sigma)
                for dx, dy in rng.normal(0, g["r"] * 0.45, (5, 2)).tolist())
    patchy = np.clip(blobs * (0.75 + 0.35 * _smooth_noise(rng, size, 48)), 0, 1)
    alpha = 0.8 if f.certain else 0.35
    _blend(img, alpha * patchy * fr.side_lung(f.side), a.tissue_level + 0.12)


def _frontal_atelectasis(img, f: Finding, a: Anatomy, fr: _Frame, size: int):
    """Plate-like atelectasis: a thin, nearly horizontal dense band at the base."""
    for x0, y0, x1, y1 in f.geo["bands"]:
        pad = f.geo["thick"] + 0.01
        win, Xw, Yw = _box(fr.X, fr.Y, min(x0, x1) - pad, min(y0, y1) - pad, max(x0, x1) + pad, max(y0, y1) + pad)
        band = _soft(f.geo["thick"] - _segment_distance(Xw, Yw, x0, y0, x1, y1), 0.006)
        _blend(img[win], f.geo["alpha"] * band * fr.lung[win], a.tissue_level + 0.12)


def _frontal_lesion(img, f: Finding, a: Anatomy, fr: _Frame, size: int):
    """Round nodule or lobulated mass with a soft edge."""
    g = f.geo
    reach = 1.3 * g["r"] + 0.01
    win, Xw, Yw = _box(fr.X, fr.Y, g["x"] - reach, g["y"] - reach, g["x"] + reach, g["y"] + reach)
    dx, dy = Xw - g["x"], Yw - g["y"]
    radius = g["r"] * (1 + 0.12 * np.cos(3 * np.arctan2(dy, dx) + g["lobes"])) if f.grade == "mass" else g["r"]
    disc = _soft(radius - _dist(dx, dy), 0.25 * g["r"] + 0.003)
    _blend(img[win], (0.85 if f.certain else 0.45) * disc, a.tissue_level + 0.15)


def _frontal_effusion(img, f: Finding, a: Anatomy, fr: _Frame):
    """Dependent fluid: fills the costophrenic angle, with a meniscus climbing laterally."""
    for side in ("right", "left") if f.side == "bilateral" else (f.side,):
        _, cp_y = costophrenic_angle(a, side)
        t = np.clip((fr.u - a.med_w) / a.lung_w, 0, 1)
        level = cp_y - f.geo["depth"] * (0.35 + 0.65 * t * t)
        fluid = fr.side_lung(side) * np.clip((fr.Y - level) / 0.02, 0, 1)
        _blend(img, (0.85 if f.certain else 0.6) * fluid, a.tissue_level + 0.1)


def _frontal_devices(f: Finding, a: Anatomy, size: int) -> np.ndarray:
    """Radiopaque devices drawn as polylines/boxes on a 0..1 layer (PIL rasterises thin lines well)."""
    layer = Image.new("L", (size, size))
    draw = ImageDraw.Draw(layer)
    g, cx, s = f.geo, a.cx, size

    def line(points, width, opacity):
        draw.line([(x * s, y * s) for x, y in points], fill=int(255 * opacity),
                  width=max(1, round(width * s)), joint="curve")

    if "ett_cm" in g:
        tip = a.carina_y - g["ett_cm"] / a.cm_per_unit
        line([(cx + 0.004, -0.01), (cx + 0.004, tip)], 0.014, 0.45)
        line([(cx + 0.004, -0.01), (cx + 0.004, tip)], 0.004, 0.8)  # the radiopaque stripe
    if "line" in g:
        tip = a.carina_y + {"mid SVC": 0.01, "lower SVC": 0.045, "cavoatrial junction": 0.08}[g["line_tip"]]
        if g["line"] == "right internal jugular":
            path = [(cx - 0.08, -0.01), (cx - 0.06, a.apex_y + 0.05), (cx - 0.035, a.carina_y - 0.03)]
        else:
            path = [(cx + a.hemi_w + 0.06, a.apex_y + 0.06), (cx + 0.2, a.apex_y + 0.09),
                    (cx + 0.05, a.apex_y + 0.12), (cx - 0.025, a.carina_y - 0.02)]
        line(path + [(cx - 0.03, tip)], 0.007, 0.7)
    if "pacer" in g:
        bx, by = cx + _SIGN[g["pacer"]] * (a.hemi_w - 0.06), a.apex_y + 0.1
        draw.rounded_rectangle([(bx - 0.045) * s, (by - 0.032) * s, (bx + 0.045) * s, (by + 0.032) * s],
                               radius=0.012 * s, fill=245)
        svc = [(bx, by), (cx + _SIGN[g["pacer"]] * 0.08, a.apex_y + 0.12), (cx - 0.03, a.carina_y + 0.02)]
        line(svc + [(a.heart_cx + 0.5 * a.heart_hw, a.heart_cy + 0.5 * a.heart_hh)], 0.006, 0.85)  # RV
        if g["leads"] == 2:
            line(svc + [(cx - 0.06, a.heart_cy - 0.4 * a.heart_hh)], 0.006, 0.85)  # right atrium
    return np.asarray(layer, dtype=np.float32) / 255


def _overlay(img, layer):
    """Metal over anatomy: push toward white in proportion to the layer's opacity."""
    img += layer * (1.0 - img)


_LEVELS = 4096  # intermediate precision before the 8-bit tone curve


def _expose(img, a: Anatomy, X, tex, size: int) -> np.ndarray:
    """Detector response → uint8: exposure gradient, quantum noise, tone curve (gamma + window), blur.

    The tone curve is a lookup table on 12-bit values and the noise is a random window into a fixed
    noise bank: both far cheaper than per-pixel pow / fresh Gaussian draws, and just as deterministic.
    """
    y0, x0 = tex.integers(0, size, 2)
    img += a.tilt * (X - 0.5) + a.noise * _noise_bank(size)[y0:y0 + size, x0:x0 + size]
    levels = (np.clip(img, 0, 1) * (_LEVELS - 1) + 0.5).astype(np.uint16)
    curve = np.linspace(0, 1, _LEVELS) ** a.gamma
    lut = (np.clip((curve - 0.5) * a.contrast + 0.5 + a.brightness, 0, 1) * 255 + 0.5).astype(np.uint8)
    film = Image.fromarray(lut[levels]).filter(ImageFilter.GaussianBlur(a.blur * size / 256))
    return np.asarray(film)


@lru_cache(maxsize=2)
def _noise_bank(size: int) -> np.ndarray:
    """Standard-normal noise twice the image size; each image reads a random window of it."""
    return np.random.default_rng(0).standard_normal((2 * size, 2 * size), dtype=np.float32)


_FRONTAL_FINDINGS = {
    "pneumothorax": _frontal_pneumothorax, "edema": _frontal_edema, "consolidation": _frontal_consolidation,
    "atelectasis": _frontal_atelectasis, "lesion": _frontal_lesion,
}


# ----------------------------------------------------------------------------------------------
# Lateral view (patient facing image left: anterior left, spine right)
# ----------------------------------------------------------------------------------------------

def lateral_heart(a: Anatomy) -> tuple[float, float, float, float]:
    """(x, y, half-width, half-height) of the heart on the lateral view: it hugs the sternum and grows
    backward with the cardiothoracic ratio, filling the retrocardiac space when enlarged."""
    depth = a.post_x - a.ant_x
    hw = depth * 0.33 * a.ctr
    return a.ant_x + 0.05 * depth + hw, a.heart_cy, hw, a.heart_hh


def lateral_diaphragm_y(a: Anatomy, x):
    """Diaphragm on the lateral view: highest anteriorly, deepest at the posterior costophrenic sulcus."""
    peak = a.ant_x + 0.35 * (a.post_x - a.ant_x)
    t = (x - peak) / (a.post_x - peak)
    return (a.dome_y["right"] + a.dome_y["left"]) / 2 + a.dome_h * t * t


def render_lateral(study: Study, size: int) -> np.ndarray:
    """The lateral view as an 8-bit grayscale array; shows heart size, effusion, opacities and devices."""
    a = study.anatomy
    X, Y = _grid(size)
    tex = _rng(study.seed, _STREAM_LATERAL, study.index, study.style)
    depth = a.post_x - a.ant_x
    lx, ly = (a.ant_x + a.post_x) / 2, lateral_diaphragm_y(a, a.post_x) - 0.05
    body = _soft(X - a.ant_x + 0.05, 0.03) * _soft(a.post_x + 0.07 - X, 0.03)
    img = (0.03 + body * (a.tissue_level + 0.1 * np.clip((Y - ly) / 0.1, 0, 1))).astype(np.float32)
    lung_e = ((X - lx + 0.02) / (depth / 2 - 0.04)) ** 2 + ((Y - ly) / (ly - a.apex_y)) ** 2
    lung = _soft(1 - lung_e, 0.1) * _soft(lateral_diaphragm_y(a, X) - Y, 0.008)
    markings = np.clip(_smooth_noise(tex, size, 28), 0, None) * np.exp(-_dist(X - lx, Y - a.carina_y - 0.08) / 0.2)
    _blend(img, lung, a.lung_level + 0.05 + 0.06 * markings)
    # Spine: vertebral bodies with disc spaces, following a gentle kyphosis; seen through the lungs.
    spine_x = a.post_x - 0.03 + 0.1 * (Y - 0.5) ** 2
    vertebrae = _soft(0.045 - np.abs(X - spine_x), 0.01) * _soft(np.cos(2 * np.pi * Y / 0.055) + 0.7, 0.3)
    _blend(img, 0.7 * vertebrae, a.tissue_level + 0.22)
    sternum = _soft(0.008 - np.abs(X - a.ant_x - 0.01), 0.006) * (Y > a.apex_y + 0.06) * (Y < a.heart_cy)
    img += 0.15 * sternum
    trachea = _segment_distance(X, Y, lx - 0.04, -0.01, lx + 0.01, a.carina_y)
    img -= 0.12 * _soft(0.014 - trachea, 0.006)
    hx, hy, hw, hh = lateral_heart(a)
    heart = _soft(1 - ((X - hx) / hw) ** 2 - ((Y - hy) / hh) ** 2, 0.12) * _soft(lateral_diaphragm_y(a, X) - Y, 0.03)
    _blend(img, heart, a.tissue_level + 0.16)
    for kind in ("edema", "consolidation", "lesion", "effusion"):
        if f := study.finding(kind):
            _LATERAL_FINDINGS[kind](img, f, a, X, Y, lung)
    if f := study.finding("devices"):
        _overlay(img, _lateral_devices(f, a, size))
    return _expose(img, a, X, tex, size)


def _lateral_x(a: Anatomy, f: Finding) -> float:
    return a.ant_x + f.geo["depth"] * (a.post_x - a.ant_x)


def _lateral_edema(img, f, a, X, Y, lung):
    haze = _gauss(X - (a.ant_x + a.post_x) / 2, 0.2) * _gauss(Y - a.carina_y - 0.08, 0.17)
    _blend(img, lung * f.geo["alpha"] * haze, a.tissue_level + 0.1)


def _lateral_consolidation(img, f, a, X, Y, lung):
    r = f.geo["r"]
    blob = _gauss(X - _lateral_x(a, f), r) * _gauss(Y - f.geo["y"], r)
    _blend(img, (0.7 if f.certain else 0.3) * blob * lung, a.tissue_level + 0.12)


def _lateral_lesion(img, f, a, X, Y, lung):
    r = f.geo["r"]
    disc = _soft(r - _dist(X - _lateral_x(a, f), Y - f.geo["y"]), 0.25 * r + 0.003)
    _blend(img, (0.75 if f.certain else 0.4) * disc, a.tissue_level + 0.15)


def _lateral_effusion(img, f, a, X, Y, lung):
    """Fluid in the posterior costophrenic sulcus, meniscus rising posteriorly."""
    t = np.clip((X - a.ant_x) / (a.post_x - a.ant_x), 0, 1)
    depth = f.geo["depth"] * (1.6 if f.side == "bilateral" else 1.3)
    level = lateral_diaphragm_y(a, a.post_x) - depth * (0.3 + 0.7 * t * t)
    _blend(img, (0.85 if f.certain else 0.6) * lung * np.clip((Y - level) / 0.02, 0, 1), a.tissue_level + 0.1)


def _lateral_devices(f: Finding, a: Anatomy, size: int) -> np.ndarray:
    """Tube in the trachea, line in the SVC, pacemaker generator in the anterior chest wall."""
    layer = Image.new("L", (size, size))
    draw = ImageDraw.Draw(layer)
    g, s = f.geo, size
    lx = (a.ant_x + a.post_x) / 2
    if "ett_cm" in g:
        tip = a.carina_y - g["ett_cm"] / a.cm_per_unit
        draw.line([((lx - 0.04) * s, 0), ((lx - 0.005) * s, tip * s)], fill=150, width=max(1, round(0.012 * s)))
    if "line" in g:
        draw.line([((lx - 0.07) * s, 0), ((lx - 0.06) * s, (a.carina_y + 0.04) * s)], fill=170,
                  width=max(1, round(0.006 * s)))
    if "pacer" in g:
        bx, by = a.ant_x + 0.02, a.apex_y + 0.12
        draw.rounded_rectangle([(bx - 0.02) * s, (by - 0.04) * s, (bx + 0.025) * s, (by + 0.04) * s],
                               radius=0.008 * s, fill=245)
        hx, hy, hw, hh = lateral_heart(a)
        draw.line([(bx * s, by * s), ((lx - 0.05) * s, (a.carina_y + 0.03) * s), (hx * s, (hy + 0.5 * hh) * s)],
                  fill=215, width=max(1, round(0.006 * s)), joint="curve")
    return np.asarray(layer, dtype=np.float32) / 255


_LATERAL_FINDINGS = {
    "edema": _lateral_edema, "consolidation": _lateral_consolidation, "lesion": _lateral_lesion,
    "effusion": _lateral_effusion,
}


# ----------------------------------------------------------------------------------------------
# Reports: sentences carry the labels they assert, so labels follow from what is written
# ----------------------------------------------------------------------------------------------

# Findings-sentence and impression templates per finding; "~" keys hold the hedged wording used for
# faintly drawn findings. Words: {side} {zone} {grade} {adv} {cm} {rib}.
_POSITIVE = {
    "cardiomegaly": (
        ("The heart is {adv} enlarged.", "The cardiac silhouette is {adv} enlarged.", "Heart size is {adv} enlarged.",
         "There is {grade} cardiomegaly.", "{grade} enlargement of the cardiac silhouette.",
         "{grade} cardiomegaly is present."),
        ("{grade} cardiomegaly.", "Cardiomegaly.", "Enlarged cardiac silhouette."),
    ),
    "~cardiomegaly": (
        ("The heart size is borderline enlarged.", "Borderline cardiomegaly.",
         "The cardiac silhouette is borderline enlarged; mild cardiomegaly cannot be excluded."),
        ("Borderline cardiomegaly.", "Possible mild cardiomegaly."),
    ),
    "effusion": (
        ("There is a {grade} {side} pleural effusion.", "{grade} {side} pleural effusion.",
         "{grade} {side}-sided pleural effusion is present.",
         "A {grade} {side} pleural effusion blunts the {side} costophrenic angle.",
         "Blunting of the {side} costophrenic angle is consistent with a {grade} pleural effusion."),
        ("{grade} {side} pleural effusion.", "{side} pleural effusion, {grade}."),
    ),
    "effusion-bilateral": (
        ("There are {grade} bilateral pleural effusions.", "{grade} bilateral pleural effusions.",
         "{grade} bilateral pleural effusions are present.",
         "Blunting of both costophrenic angles is consistent with {grade} bilateral pleural effusions."),
        ("{grade} bilateral pleural effusions.", "Bilateral pleural effusions, {grade}."),
    ),
    "~effusion": (
        ("A trace {side} pleural effusion may be present.",
         "A trace {side} pleural effusion cannot be excluded.", "Possible trace {side} pleural effusion."),
        ("Possible trace {side} pleural effusion.",),
    ),
    "~effusion-bilateral": (
        ("Trace bilateral pleural effusions cannot be excluded.", "Possible trace bilateral pleural effusions."),
        ("Possible trace bilateral pleural effusions.",),
    ),
    "pneumothorax": (
        ("There is a {grade} {side} pneumothorax.", "{grade} {side} apical pneumothorax.",
         "A {grade} {side}-sided pneumothorax is present, with a visible visceral pleural line.",
         "{side} pneumothorax, {grade} in size."),
        ("{grade} {side} pneumothorax.", "{side} pneumothorax, {grade}."),
    ),
    "~pneumothorax": (
        ("Possible tiny {side} apical pneumothorax.", "A tiny {side} apical pneumothorax cannot be excluded.",
         "A thin line at the {side} apex may represent a tiny pneumothorax."),
        ("Possible tiny {side} apical pneumothorax.",),
    ),
    "consolidation": (
        ("There is {grade} consolidation in the {side} {zone}.", "{grade} airspace consolidation in the {side} {zone}.",
         "Consolidation is seen in the {side} {zone}.", "{side} {zone} consolidation.",
         "Airspace consolidation is present within the {side} {zone}."),
        ("{side} {zone} consolidation.", "Focal consolidation in the {side} {zone}."),
    ),
    "~consolidation": (
        ("Possible subtle consolidation in the {side} {zone}.",
         "Early consolidation in the {side} {zone} cannot be excluded.",
         "Subtle consolidation may be present in the {side} {zone}."),
        ("Possible early {side} {zone} consolidation.",),
    ),
    "edema": (
        ("There is {grade} pulmonary edema.", "{grade} interstitial pulmonary edema.",
         "Perihilar haziness and vascular congestion consistent with {grade} pulmonary edema.",
         "Bilateral perihilar opacities with pulmonary vascular congestion, compatible with {grade} pulmonary edema."),
        ("{grade} pulmonary edema.", "Findings consistent with {grade} pulmonary edema."),
    ),
    "~edema": (
        ("Possible mild interstitial edema.", "Mild pulmonary edema cannot be excluded.",
         "Mild interstitial edema may be present."),
        ("Possible mild pulmonary edema.",),
    ),
    "atelectasis": (
        ("{grade} atelectasis at the {side} lung base.", "There is {grade} atelectasis in the {side} lower lobe.",
         "{grade} opacity at the {side} base, consistent with atelectasis.", "{side} basilar {grade} atelectasis."),
        ("{side} basilar atelectasis.", "{grade} atelectasis at the {side} base."),
    ),
    "atelectasis-bilateral": (
        ("Bibasilar {grade} atelectasis.", "There is {grade} atelectasis at both lung bases.",
         "{grade} opacities at both bases, consistent with atelectasis."),
        ("Bibasilar atelectasis.",),
    ),
    "~atelectasis": (
        ("Minimal {side} basilar atelectasis is possible.", "Possible subsegmental atelectasis at the {side} base."),
        ("Possible minimal {side} basilar atelectasis.",),
    ),
    "~atelectasis-bilateral": (
        ("Possible minimal bibasilar atelectasis.",),
        ("Possible minimal bibasilar atelectasis.",),
    ),
    "lesion": (
        ("There is a {cm} cm nodule in the {side} {zone}.", "A {cm} cm rounded nodule projects over the {side} {zone}.",
         "{side} {zone} nodule measuring approximately {cm} cm.",
         "A well-circumscribed {cm} cm pulmonary nodule is seen in the {side} {zone}."),
        ("{cm} cm {side} {zone} nodule; CT is recommended for further characterization.",
         "{side} {zone} pulmonary nodule."),
    ),
    "lesion-mass": (
        ("There is a {cm} cm mass in the {side} {zone}.", "A large {side} {zone} mass measures approximately {cm} cm.",
         "A {cm} cm mass is present in the {side} {zone}."),
        ("{side} {zone} mass; recommend CT for further evaluation.", "{cm} cm {side} {zone} mass."),
    ),
    "~lesion": (
        ("Possible small nodule in the {side} {zone}.", "A subtle nodule in the {side} {zone} cannot be excluded.",
         "Questionable small nodule projecting over the {side} {zone}."),
        ("Possible {side} {zone} nodule.",),
    ),
    "fracture": (
        ("There is an acute fracture of the {side} {rib} rib.", "Displaced fracture of the {side} {rib} posterior rib.",
         "{side} {rib} rib fracture is noted.", "Acute-appearing fracture of the {side} lateral {rib} rib."),
        ("Acute {side} {rib} rib fracture.", "{side} {rib} rib fracture."),
    ),
    "~fracture": (
        ("Possible nondisplaced fracture of the {side} {rib} rib.",
         "Subtle cortical irregularity of the {side} {rib} rib may represent a nondisplaced fracture."),
        ("Possible {side} {rib} rib fracture.",),
    ),
}

_ZONE_WORDS = {
    "upper": ("upper lobe", "upper lung zone", "upper lung"),
    "mid": ("mid lung zone", "mid lung"),
    "lower": ("lower lobe", "lung base", "lower lung zone"),
}
_ADVERB = {"mild": ("mildly",), "moderate": ("moderately",), "marked": ("markedly", "severely"), "borderline": ("",)}
_GRADE_WORDS = {"marked": ("marked", "severe"), "dense": ("dense", "dense focal")}
_ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}

# Negations of absent findings: item -> (templates, labels asserted 0, report section).
_NEGATIONS = {
    "cardiomegaly": (("The heart is normal in size.", "Heart size is normal.", "Heart size is within normal limits.",
                      "The cardiac silhouette is normal in size.", "Normal heart size."),
                     {"Cardiomegaly": 0}, "heart"),
    # The cardiomediastinal silhouette is Enlarged Cardiomediastinum's concern; only heart words are Cardiomegaly's.
    "mediastinum": (("The mediastinum is unremarkable.", "Mediastinal contours are within normal limits.",
                     "The mediastinal and hilar contours are normal.", "Normal mediastinal contours.",
                     "The cardiomediastinal silhouette is within normal limits.", "Normal cardiomediastinal silhouette."),
                    {"Enlarged Cardiomediastinum": 0}, "heart"),
    "effusion": (("No pleural effusion.", "There is no pleural effusion.", "No pleural effusions are seen.",
                  "The costophrenic angles are sharp, without pleural effusion."),
                 {"Pleural Effusion": 0}, "pleura"),
    "pneumothorax": (("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax.",
                      "No visible pneumothorax."), {"Pneumothorax": 0}, "pleura"),
    "consolidation": (("No focal consolidation.", "There is no focal consolidation.",
                       "No focal consolidation is seen.", "No confluent consolidation."),
                      {"Consolidation": 0}, "lungs"),
    "edema": (("No pulmonary edema.", "There is no pulmonary edema.", "No evidence of pulmonary edema.",
               "No vascular congestion or edema."), {"Edema": 0}, "lungs"),
    "lesion": (("No suspicious pulmonary nodules or masses.", "No focal nodule or mass.",
                "There are no nodules or masses."), {"Lung Lesion": 0}, "lungs"),
    "airspace": (("No focal airspace disease.", "There is no focal airspace opacity."), {"Lung Opacity": 0}, "lungs"),
    "fracture": (("No displaced rib fractures.", "No acute fracture is identified.", "There is no displaced rib fracture.",
                  "No acute rib fracture."), {"Fracture": 0}, "bones"),
}
# How often an absent finding is explicitly negated (the rest stay blank, as in real reports).
_NEGATION_RATE = dict(cardiomegaly=0.85, mediastinum=0.5, effusion=0.7, pneumothorax=0.65, consolidation=0.55,
                      edema=0.3, lesion=0.2, airspace=0.25, fracture=0.35)
# One sentence negating several absent findings at once; tried largest first.
_COMBINED_NEGATIONS = (
    (("consolidation", "effusion", "pneumothorax"),
     ("No focal consolidation, pleural effusion, or pneumothorax.",
      "There is no focal consolidation, pleural effusion, or pneumothorax.",
      "Negative for focal consolidation, pleural effusion, or pneumothorax."), "pleura"),
    (("effusion", "pneumothorax"),
     ("No pleural effusion or pneumothorax.", "There is no pneumothorax or pleural effusion.",
      "No pneumothorax or pleural effusion is seen."), "pleura"),
    (("cardiomegaly", "mediastinum"),
     ("The heart and mediastinum are within normal limits.", "Heart size and mediastinal contours are normal.",
      "The cardiac and mediastinal contours are within normal limits."), "heart"),
)
_CLEAR_LUNGS = ("The lungs are clear.", "Lungs are clear bilaterally.", "The lungs are well expanded and clear.",
                "Both lungs are clear.")
_NORMAL_VESSELS = ("Pulmonary vascularity is within normal limits.", "The pulmonary vasculature is normal.")
# Normal bones name no fracture (so assert no label), and are only said when no fracture is drawn.
_NORMAL_BONES = ("Bony structures are intact.", "No acute osseous abnormality.", "The osseous structures are unremarkable.")
_VIEWS = {
    ("mimic", 1): ("AP portable upright view of the chest.", "Single frontal view of the chest.",
                   "Portable semi-upright radiograph of the chest."),
    ("iu-xray", 1): ("Single PA view of the chest.", "Frontal view of the chest."),
    ("iu-xray", 2): ("PA and lateral views of the chest.", "Frontal and lateral views of the chest were obtained."),
}
_NO_ACUTE = {
    "mimic": ("No acute cardiopulmonary process.", "No acute intrathoracic process.",
              "No acute cardiopulmonary abnormality."),
    "iu-xray": ("No acute cardiopulmonary abnormality.", "No acute disease.", "No active disease.",
                "No acute cardiopulmonary process.", "Negative chest x-ray.", "No acute cardiopulmonary findings."),
}
# Canonical section orders of the findings paragraph (radiologists differ); sometimes fully shuffled.
_SECTION_ORDERS = (("devices", "heart", "lungs", "pleura", "bones"), ("devices", "lungs", "pleura", "heart", "bones"),
                   ("heart", "lungs", "pleura", "bones", "devices"))
# Impression lists the most important finding first.
_IMPRESSION_ORDER = ("pneumothorax", "effusion", "consolidation", "edema", "cardiomegaly", "lesion",
                     "atelectasis", "fracture", "devices")
_LUNGS_NOT_CLEAR = {"consolidation", "edema", "atelectasis", "lesion", "pneumothorax", "effusion"}

Labels = dict  # CheXpert label -> 1 | 0 | -1 | None


def _sentence(rng, templates, **words) -> str:
    text = _choice(rng, templates).format(**words)
    return text[0].upper() + text[1:]


def _words(f: Finding, rng) -> dict:
    """Fill-in words for a finding's templates, matching what was drawn."""
    rib = f.geo.get("rib", 0)
    return {
        "side": f.side, "grade": _choice(rng, _GRADE_WORDS.get(f.grade, (f.grade,))),
        "adv": _choice(rng, _ADVERB.get(f.grade, ("",))), "zone": _choice(rng, _ZONE_WORDS.get(f.zone, ("",))),
        "cm": f.geo.get("cm", ""), "rib": _ORDINAL.get(rib, f"{rib}th"),
    }


def _finding_text(f: Finding, rng) -> tuple[str, str, Labels]:
    """(findings sentence, impression phrase, labels) for one drawn finding."""
    key = ("" if f.certain else "~") + f.kind
    if f.side == "bilateral" and f.kind in ("effusion", "atelectasis"):
        key += "-bilateral"
    if f.kind == "lesion" and f.grade == "mass":
        key += "-mass"
    body, impression = _POSITIVE[key]
    words = _words(f, rng)
    value = 1 if f.certain else -1
    sentence, summary = _sentence(rng, body, **words), _sentence(rng, impression, **words)
    labels = {lab: value for lab in FINDING_LABELS[f.kind]}
    if _OPACITY_WORDS.search(sentence + " " + summary):  # CheXpert labels Lung Opacity from these words
        labels["Lung Opacity"] = value
    return sentence, summary, labels


def _devices_text(f: Finding, rng) -> tuple[list[str], str, Labels]:
    g, sentences, names = f.geo, [], []
    if "ett_cm" in g:
        cm = f"{g['ett_cm']:g}"
        sentences.append(_sentence(rng, ("An endotracheal tube is in place with the tip {cm} cm above the carina.",
                                         "Endotracheal tube terminates approximately {cm} cm above the carina.",
                                         "ET tube tip is {cm} cm above the carina."), cm=cm))
        names.append("endotracheal tube")
    if "line" in g:
        line = g["line"] if g["line"] == "left subclavian" else _choice(rng, (g["line"], "right IJ"))
        sentences.append(_sentence(rng, ("{line} central venous catheter terminates in the {tip}.",
                                         "A {line} central line is present with its tip in the {tip}.",
                                         "{line} catheter tip projects over the {tip}."), line=line, tip=g["line_tip"]))
        names.append(f"{g['line']} central line")
    if "pacer" in g:
        leads = "the right atrium and right ventricle" if g["leads"] == 2 else "the right ventricle"
        kind = "dual-chamber" if g["leads"] == 2 else "single-lead"
        sentences.append(_sentence(rng, ("{side}-sided pacemaker with leads terminating in {leads}.",
                                         "A {side} chest wall {kind} pacemaker is present with leads in {leads}.",
                                         "{kind} pacemaker overlies the {side} chest with leads in {leads}."),
                                   side=g["pacer"], leads=leads, kind=kind))
        names.append("pacemaker")
    listed = " and ".join(names)
    impression = _sentence(rng, ("Support devices in expected position.", "{devices} in satisfactory position.",
                                 "{devices} as described above."), devices=listed)
    return sentences, impression, {"Support Devices": 1}


def _negations(study: Study, rng) -> list[tuple[str, Labels, str]]:
    """Negations for a random subset of absent findings: (sentence, labels, section)."""
    present = {f.kind for f in study.findings}
    candidates = [k for k in _NEGATION_RATE if k not in present]
    if present & {"consolidation", "edema", "atelectasis"}:
        candidates.remove("airspace")  # "no airspace opacity" would contradict a drawn opacity
    chosen = {k for k in candidates if rng.random() < _NEGATION_RATE[k]}
    out = []
    for items, templates, section in _COMBINED_NEGATIONS:
        if chosen.issuperset(items) and rng.random() < 0.6:
            labels = {lab: 0 for item in items for lab in _NEGATIONS[item][1]}
            out.append((_sentence(rng, templates), labels, section))
            chosen.difference_update(items)
    for item in sorted(chosen, key=list(_NEGATIONS).index):
        templates, labels, section = _NEGATIONS[item]
        out.append((_sentence(rng, templates), dict(labels), section))
    return out


def _merge(labels: Labels, new: Labels):
    """CheXpert mention aggregation: positive beats uncertain beats negative beats blank."""
    rank = {None: 0, 0: 1, -1: 2, 1: 3}
    for lab, value in new.items():
        if rank[value] > rank[labels[lab]]:
            labels[lab] = value


def write_report(study: Study) -> tuple[str, Labels]:
    """The radiologist's report for `study` and the CheXpert labels its sentences assert."""
    rng = _rng(study.seed, _STREAM_REPORT, study.index, study.style)
    labels: Labels = dict.fromkeys(CHEXPERT_LABELS)
    sections: dict[str, list[str]] = {s: [] for s in _SECTION_ORDERS[0]}
    impressions = []
    present = {f.kind for f in study.findings}
    section_of = {"cardiomegaly": "heart", "effusion": "pleura", "pneumothorax": "pleura", "fracture": "bones"}
    for f in sorted(study.findings, key=lambda f: _IMPRESSION_ORDER.index(f.kind)):
        if f.kind == "devices":
            sentences, impression, new = _devices_text(f, rng)
            sections["devices"] += sentences
        else:
            sentence, impression, new = _finding_text(f, rng)
            sections[section_of.get(f.kind, "lungs")].append(sentence)
        impressions.append(impression)
        _merge(labels, new)
    for sentence, new, section in _negations(study, rng):
        sections[section].append(sentence)
        _merge(labels, new)
    if not present & _LUNGS_NOT_CLEAR and rng.random() < 0.8:
        sections["lungs"].insert(0, _choice(rng, _CLEAR_LUNGS))
    if "edema" not in present and rng.random() < 0.2:
        sections["lungs"].append(_choice(rng, _NORMAL_VESSELS))
    if "fracture" not in present and rng.random() < 0.3:
        sections["bones"].append(_choice(rng, _NORMAL_BONES))
    labels["No Finding"] = None if any(v in (1, -1) for k, v in labels.items() if k != "Support Devices") else 1
    if not present - {"devices", "fracture"}:
        impressions.append(_choice(rng, _NO_ACUTE[study.style]))
    text = _assemble(study, sections, impressions, rng)
    return text, labels


def _assemble(study: Study, sections: dict, impressions: list[str], rng) -> str:
    order = list(_choice(rng, _SECTION_ORDERS))
    if rng.random() < 0.2:
        rng.shuffle(order)
    findings = [s for name in order for s in sections[name]]
    if rng.random() < (0.4 if study.style == "mimic" else 0.25):
        findings.insert(0, _choice(rng, _VIEWS[(study.style, study.views)]))
    numbered = len(impressions) > 1 and rng.random() < (0.4 if study.style == "mimic" else 0.7)
    impression = " ".join(f"{i}. {s}" for i, s in enumerate(impressions, 1)) if numbered else " ".join(impressions)
    if study.style == "mimic" and rng.random() < 0.55:
        return f"FINDINGS: {' '.join(findings)}\n\nIMPRESSION: {impression}"
    return f"{' '.join(findings)} {impression}"


# ----------------------------------------------------------------------------------------------
# Dataset generation
# ----------------------------------------------------------------------------------------------

def split_counts(studies: int) -> dict[str, int]:
    """Studies per split (7:1:2, rounded; test takes the remainder)."""
    train = round(studies * _TRAIN_FRACTION)
    val = min(round(studies * _VAL_FRACTION), studies - train)
    return {"train": train, "val": val, "test": studies - train - val}


def _assign_splits(studies: int, seed: int) -> list[str]:
    counts = split_counts(studies)
    names = [s for s in SPLITS for _ in range(counts[s])]
    order = np.random.default_rng([seed, _STREAM_SPLIT]).permutation(studies)
    out = [""] * studies
    for rank, index in enumerate(order):
        out[index] = names[rank]
    return out


def _build_study(job: tuple[str, str, int, int, int, str]) -> dict:
    """Sample, draw, save and describe one study (runs in a worker process)."""
    images_dir, style, seed, index, size, split = job
    study = sample_study(seed, index, style)
    folder = Path(images_dir) / study.study_id
    folder.mkdir(parents=True, exist_ok=True)
    views = [render_frontal(study, size)] + ([render_lateral(study, size)] if study.views == 2 else [])
    paths = []
    for view, pixels in enumerate(views):
        Image.fromarray(pixels).save(folder / f"{view}.png", format="PNG", compress_level=1)
        paths.append(f"{study.study_id}/{view}.png")
    report, labels = write_report(study)
    return {"id": study.study_id, "report": report, "image_path": paths, "split": split, "labels": labels}


def _validate(out_dir, studies, style, seed, image_size, workers) -> Path:
    if style not in STYLES:
        raise R2GError(f"unknown synthetic data style '{style}'; choose one of: {', '.join(STYLES)}")
    for name, value, low, high in (("studies", studies, 1, None), ("seed", seed, 0, None),
                                   ("image_size", image_size, 64, 1024), ("workers", workers, 0, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise R2GError(f"synthetic data: {name} must be an integer {bounds}, got {value!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise R2GError(f"synthetic data output '{out}' exists and is not a directory; choose another --out")
    return out


def generate(out_dir: str | Path, studies: int, style: str = "mimic", seed: int = 0, image_size: int = 256,
             workers: int = 2) -> dict:
    """Write `studies` synthetic studies to `out_dir` (images/<id>/<view>.png + annotation.json, R2Gen layout).

    Deterministic in (studies, style, seed, image_size), whatever `workers` is. Workers are spawned
    processes, so a script calling this with workers > 1 needs the usual `if __name__ == "__main__":`
    guard. Existing files are overwritten; stale study folders from a larger earlier run are left.
    Returns a summary: studies per split, images written, label counts, seconds.
    """
    out = _validate(out_dir, studies, style, seed, image_size, workers)
    start = time.perf_counter()
    images_dir = out / "images"
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise R2GError(f"cannot create synthetic data folder '{images_dir}': {exc.strerror}") from exc
    splits = _assign_splits(studies, seed)
    jobs = [(str(images_dir), style, seed, index, image_size, splits[index]) for index in range(studies)]
    workers = min(workers, studies)
    if workers <= 1:
        entries = [_build_study(job) for job in jobs]
    else:
        # spawn, not fork: the caller may already hold CUDA or OpenMP threads, which fork breaks.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            entries = pool.map(_build_study, jobs, chunksize=max(1, min(32, studies // (4 * workers))))
    annotation = {split: [e for e in entries if e["split"] == split] for split in SPLITS}
    (out / "annotation.json").write_text(json.dumps(annotation), encoding="utf-8")
    return {
        "out_dir": str(out),
        "style": style,
        "studies": {split: len(annotation[split]) for split in SPLITS},
        "images": sum(len(e["image_path"]) for e in entries),
        "labels": _label_counts(entries),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _label_counts(entries: list[dict]) -> dict[str, dict[str, int]]:
    counts = {lab: {"positive": 0, "uncertain": 0, "negative": 0, "blank": 0} for lab in CHEXPERT_LABELS}
    names = {1: "positive", -1: "uncertain", 0: "negative", None: "blank"}
    for entry in entries:
        for lab, value in entry["labels"].items():
            counts[lab][names[value]] += 1
    return counts
