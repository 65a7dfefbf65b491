"""What a synthetic chest X-ray study contains: findings, anatomy and drawing geometry, sampled once.

`sample_study` draws everything random about a study except pixel texture and wording; `render` turns the
sample into pixels and `report_text` into words, so what is drawn, what is written and the CheXpert labels
always agree:

- a finding drawn clearly is stated positively and labelled 1;
- a finding drawn faintly is stated with hedging ("possible", "cannot be excluded") and labelled -1;
- an absent finding is sometimes negated ("No pneumothorax.") and then labelled 0, else left blank.

Sides are the patient's: the patient's right lung is on the left of a frontal image.
Geometry is in normalised image coordinates (x right, y down, both 0..1) so it is resolution-free.
Every study draws from its own random streams keyed by (seed, stream, index, style), so results do
not depend on how studies are spread over worker processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# The dataset a synthetic study imitates, named as r2g.config.DATASETS. In this order: a study's random streams
# are keyed by the position here (study_rng), so a seed keeps giving the same data.
STYLES = ("mimic_cxr", "iu_xray")

# Independent per-study prevalence. Their product leaves ~35-45 % of studies with no finding at all;
# MIMIC (ICU-heavy) has more devices, effusions and edema, IU-Xray (outpatient) more normals.
KINDS = ("cardiomegaly", "effusion", "pneumothorax", "consolidation", "edema",
         "atelectasis", "lesion", "fracture", "devices")
PREVALENCE = {
    "mimic_cxr": dict(cardiomegaly=0.15, effusion=0.16, pneumothorax=0.05, consolidation=0.10, edema=0.10,
                  atelectasis=0.10, lesion=0.06, fracture=0.04, devices=0.18),
    "iu_xray": dict(cardiomegaly=0.18, effusion=0.12, pneumothorax=0.04, consolidation=0.08, edema=0.07,
                    atelectasis=0.12, lesion=0.08, fracture=0.05, devices=0.08),
}
FAINT_RATE = 0.2  # share of (non-device) findings drawn faintly and reported with hedging
IU_SINGLE_VIEW_RATE = 0.1  # IU-Xray studies with only the frontal image

# Random streams of one study are keyed (seed, stream, index, style); the split shuffle is (seed, 0).
STREAM_SPLIT, STREAM_STUDY, STREAM_FRONTAL, STREAM_LATERAL, STREAM_REPORT = 0, 1, 2, 3, 4

THORAX_CM = 30.0  # an adult thorax is ~30 cm wide: converts drawn sizes into the cm quoted in reports
SIGN = {"right": -1.0, "left": 1.0}  # image-x direction of the patient's side


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
        return f"{'s' if self.style == 'mimic_cxr' else 'CXR'}{self.index:05d}"

    def finding(self, kind: str) -> Finding | None:
        return next((f for f in self.findings if f.kind == kind), None)


def study_rng(seed: int, stream: int, index: int, style: str) -> np.random.Generator:
    """Random stream `stream` (one of STREAM_*) of study `index`: independent of every other study's."""
    return np.random.default_rng([seed, stream, index, STYLES.index(style)])


def pick(rng: np.random.Generator, options):
    """One of `options`, uniformly (one integer draw, whatever the options are)."""
    return options[int(rng.integers(len(options)))]


def sample_study(seed: int, index: int, style: str) -> Study:
    """Everything random about study `index` except pixel texture and wording."""
    rng = study_rng(seed, STREAM_STUDY, index, style)
    present = rng.random(len(KINDS)) < np.array([PREVALENCE[style][k] for k in KINDS])
    faint = rng.random(len(KINDS)) < FAINT_RATE
    certain = {k: not f or k == "devices" for k, f, p in zip(KINDS, faint, present) if p}  # devices: never hedged
    # Heart size is part of the anatomy, so cardiomegaly is sampled first; the other findings are
    # placed inside that anatomy.
    cardio = _sample_cardiomegaly(rng, certain["cardiomegaly"]) if "cardiomegaly" in certain else None
    anatomy = _sample_anatomy(rng, ctr=cardio.geo["ctr"] if cardio else rng.uniform(0.40, 0.48))
    findings = [cardio] if cardio else []
    findings += [_SAMPLERS[k](rng, anatomy, certain[k], style) for k in KINDS[1:] if k in certain]
    views = 1 if style == "mimic_cxr" or rng.random() < IU_SINGLE_VIEW_RATE else 2
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
    return "bilateral" if rng.random() < bilateral else pick(rng, ("right", "left"))


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
            x = a.cx + SIGN[side] * u
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
    grade = pick(rng, ("mild", "moderate", "marked"))
    ctr = rng.uniform(*{"mild": (0.57, 0.60), "moderate": (0.60, 0.65), "marked": (0.65, 0.71)}[grade])
    return Finding("cardiomegaly", True, grade=grade, geo={"ctr": ctr})


def _sample_effusion(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side = _side(rng, bilateral=0.35)
    if not certain:
        return Finding("effusion", False, side=side, grade="trace", geo={"depth": rng.uniform(0.05, 0.07)})
    grade = pick(rng, ("small", "small", "moderate", "large"))
    depth = rng.uniform(*{"small": (0.08, 0.12), "moderate": (0.14, 0.21), "large": (0.24, 0.32)}[grade])
    return Finding("effusion", True, side=side, grade=grade, geo={"depth": depth})


def _sample_pneumothorax(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side = _side(rng)
    if not certain:  # tiny apical: the apex drops a little, the lateral margin barely moves
        return Finding("pneumothorax", False, side=side, grade="tiny",
                       geo={"k_lat": rng.uniform(0.96, 0.98), "k_top": rng.uniform(0.88, 0.92)})
    grade = pick(rng, ("small", "moderate", "large"))
    k = rng.uniform(*{"small": (0.82, 0.87), "moderate": (0.70, 0.76), "large": (0.56, 0.63)}[grade])
    return Finding("pneumothorax", True, side=side, grade=grade, geo={"k_lat": k, "k_top": k})


def _sample_consolidation(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side, zone = _side(rng), pick(rng, ("upper", "lower", "lower"))
    radius = rng.uniform(0.06, 0.09) if certain else rng.uniform(0.045, 0.06)
    x, y = _lung_point(rng, a, side, zone, margin=radius * 0.6)
    grade = pick(rng, ("focal", "patchy", "dense")) if certain else "subtle"
    return Finding("consolidation", certain, side=side, zone=zone, grade=grade,
                   geo={"x": x, "y": y, "r": radius, "depth": rng.uniform(0.3, 0.7),
                        "seed": int(rng.integers(2**31))})


def _sample_edema(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    grade = pick(rng, ("mild", "moderate")) if certain else "mild"
    alpha = {"mild": 0.45, "moderate": 0.6}[grade] if certain else 0.22
    return Finding("edema", certain, side="bilateral", grade=grade,
                   geo={"alpha": alpha, "seed": int(rng.integers(2**31))})


def _sample_atelectasis(rng, a: Anatomy, certain: bool, style: str) -> Finding:
    side = _side(rng, bilateral=0.3)
    grade = pick(rng, ("linear", "plate-like", "subsegmental"))
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
    side, zone = _side(rng), pick(rng, ("upper", "mid", "lower"))
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
    p_ett, p_line = (0.55, 0.6) if style == "mimic_cxr" else (0.15, 0.35)
    geo = {}
    while not geo:
        if rng.random() < p_ett:
            geo["ett_cm"] = round(rng.uniform(2.5, 6.0) * 2) / 2
        if rng.random() < p_line:
            geo["line"] = pick(rng, ("right internal jugular", "right internal jugular", "left subclavian"))
            geo["line_tip"] = pick(rng, ("mid SVC", "lower SVC", "cavoatrial junction"))
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
    return a.cx + SIGN[side] * a.hemi_w, a.dome_y[side] + a.dome_h


def rib_y(a: Anatomy, rib, u):
    """Centre line of posterior rib `rib` (1 = apex) at distance `u` from the midline: rising from the
    spine and curving down laterally, as posterior ribs do on a frontal film."""
    return a.apex_y - 0.02 + (rib - 1) * a.rib_spacing - 0.6 * u + 2.2 * u * u
