"""Pixels of a sampled study: the frontal view (`render_frontal`) and the lateral view (`render_lateral`),
8-bit grayscale, drawn from the geometry `sample.sample_study` fixed, with texture from the study's own
random streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from r2g.demo.sample import (SIGN, STREAM_FRONTAL, STREAM_LATERAL, Anatomy, Finding, Study, costophrenic_angle,
                             diaphragm_y, rib_y, study_rng)

# ----------------------------------------------------------------------------------------------
# Drawing primitives
# ----------------------------------------------------------------------------------------------

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
    tex = study_rng(study.seed, STREAM_FRONTAL, study.index, study.style)  # texture only: same draws whatever is found
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
        bx, by = cx + SIGN[g["pacer"]] * (a.hemi_w - 0.06), a.apex_y + 0.1
        draw.rounded_rectangle([(bx - 0.045) * s, (by - 0.032) * s, (bx + 0.045) * s, (by + 0.032) * s],
                               radius=0.012 * s, fill=245)
        svc = [(bx, by), (cx + SIGN[g["pacer"]] * 0.08, a.apex_y + 0.12), (cx - 0.03, a.carina_y + 0.02)]
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
    tex = study_rng(study.seed, STREAM_LATERAL, study.index, study.style)
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
