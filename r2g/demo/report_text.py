"""The radiologist's report of a sampled study, and the CheXpert labels its sentences assert.

Sentences come from the templates in `sentences.json` (data, like `metrics/phrases/`), filled in with the
words of what was drawn (side, zone, size, grade). Each sentence carries the labels it asserts, so the
labels follow from what is written. The report's informative content is its positive findings, which only
the image can tell; the normal sentences vary at random, so a model that ignores the image cannot score well.

sentences.json holds:
  certain, hedged     per finding, the "findings" sentences and "impression" phrases for one drawn clearly
                      or faintly; the key is the kind, plus "-bilateral" (effusion, atelectasis on both sides)
                      or "-mass" (a lesion of 3 cm or more). Words: {side} {zone} {grade} {adv} {cm} {rib}
  words               the zone, adverb and grade words a sampled zone or grade may be written as
  devices             tube {cm}, line {line} {tip}, pacemaker {side} {kind} {leads}, impression {devices}
  negations           per absent finding: sentences, the labels they assert (0), their report section
  combined_negations  one sentence negating several absent findings at once, tried in order
  clear_lungs, normal_vessels, normal_bones, views (per style and view count), no_acute (per style)
The order of every list is part of the generator's output: a seed picks templates by position.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from r2g.demo.sample import STREAM_REPORT, Finding, Study, pick, study_rng
from r2g.labels import CHEXPERT_LABELS

SENTENCES_FILE = Path(__file__).parent / "sentences.json"

# The CheXpert labels each finding asserts (1 when drawn clearly, -1 when drawn faintly).
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
OPACITY_WORDS = re.compile(r"opacit|infiltrat|airspace disease|air-space disease", re.IGNORECASE)

# How often an absent finding is explicitly negated (the rest stay blank, as in real reports); the keys are
# those of the templates' "negations", and their order is the order of the random draws.
_NEGATION_RATE = dict(cardiomegaly=0.85, mediastinum=0.5, effusion=0.7, pneumothorax=0.65, consolidation=0.55,
                      edema=0.3, lesion=0.2, airspace=0.25, fracture=0.35)
# Canonical section orders of the findings paragraph (radiologists differ); sometimes fully shuffled.
_SECTION_ORDERS = (("devices", "heart", "lungs", "pleura", "bones"), ("devices", "lungs", "pleura", "heart", "bones"),
                   ("heart", "lungs", "pleura", "bones", "devices"))
# Impression lists the most important finding first.
_IMPRESSION_ORDER = ("pneumothorax", "effusion", "consolidation", "edema", "cardiomegaly", "lesion",
                     "atelectasis", "fracture", "devices")
_LUNGS_NOT_CLEAR = {"consolidation", "edema", "atelectasis", "lesion", "pneumothorax", "effusion"}
_ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}

Labels = dict  # CheXpert label -> 1 | 0 | -1 | None


@lru_cache(maxsize=1)
def templates() -> dict:
    """The sentence templates of `sentences.json`, read once per process."""
    return json.loads(SENTENCES_FILE.read_text(encoding="utf-8"))


def _sentence(rng, options, **words) -> str:
    text = pick(rng, options).format(**words)
    return text[0].upper() + text[1:]


def _words(f: Finding, rng) -> dict:
    """Fill-in words for a finding's templates, matching what was drawn."""
    words, rib = templates()["words"], f.geo.get("rib", 0)
    return {
        "side": f.side, "grade": pick(rng, words["grade"].get(f.grade, (f.grade,))),
        "adv": pick(rng, words["adverb"].get(f.grade, ("",))), "zone": pick(rng, words["zone"].get(f.zone, ("",))),
        "cm": f.geo.get("cm", ""), "rib": _ORDINAL.get(rib, f"{rib}th"),
    }


def _finding_text(f: Finding, rng) -> tuple[str, str, Labels]:
    """(findings sentence, impression phrase, labels) for one drawn finding."""
    key = f.kind
    if f.side == "bilateral" and f.kind in ("effusion", "atelectasis"):
        key += "-bilateral"
    if f.kind == "lesion" and f.grade == "mass":
        key += "-mass"
    wording = templates()["certain" if f.certain else "hedged"][key]
    words = _words(f, rng)
    value = 1 if f.certain else -1
    sentence, summary = _sentence(rng, wording["findings"], **words), _sentence(rng, wording["impression"], **words)
    labels = {lab: value for lab in FINDING_LABELS[f.kind]}
    if OPACITY_WORDS.search(sentence + " " + summary):  # CheXpert labels Lung Opacity from these words
        labels["Lung Opacity"] = value
    return sentence, summary, labels


def _devices_text(f: Finding, rng) -> tuple[list[str], str, Labels]:
    g, devices, written, names = f.geo, templates()["devices"], [], []
    if "ett_cm" in g:
        written.append(_sentence(rng, devices["tube"], cm=f"{g['ett_cm']:g}"))
        names.append("endotracheal tube")
    if "line" in g:
        line = g["line"] if g["line"] == "left subclavian" else pick(rng, (g["line"], "right IJ"))
        written.append(_sentence(rng, devices["line"], line=line, tip=g["line_tip"]))
        names.append(f"{g['line']} central line")
    if "pacer" in g:
        leads = "the right atrium and right ventricle" if g["leads"] == 2 else "the right ventricle"
        kind = "dual-chamber" if g["leads"] == 2 else "single-lead"
        written.append(_sentence(rng, devices["pacemaker"], side=g["pacer"], leads=leads, kind=kind))
        names.append("pacemaker")
    impression = _sentence(rng, devices["impression"], devices=" and ".join(names))
    return written, impression, {"Support Devices": 1}


def _negations(study: Study, rng) -> list[tuple[str, Labels, str]]:
    """Negations for a random subset of absent findings: (sentence, labels, section)."""
    negations = templates()["negations"]
    present = {f.kind for f in study.findings}
    candidates = [k for k in _NEGATION_RATE if k not in present]
    if present & {"consolidation", "edema", "atelectasis"}:
        candidates.remove("airspace")  # "no airspace opacity" would contradict a drawn opacity
    chosen = {k for k in candidates if rng.random() < _NEGATION_RATE[k]}
    out = []
    for combined in templates()["combined_negations"]:
        items = combined["items"]
        if chosen.issuperset(items) and rng.random() < 0.6:
            labels = {lab: 0 for item in items for lab in negations[item]["labels"]}
            out.append((_sentence(rng, combined["sentences"]), labels, combined["section"]))
            chosen.difference_update(items)
    for item in sorted(chosen, key=list(negations).index):
        negation = negations[item]
        out.append((_sentence(rng, negation["sentences"]), dict(negation["labels"]), negation["section"]))
    return out


def _merge(labels: Labels, new: Labels):
    """CheXpert mention aggregation: positive beats uncertain beats negative beats blank."""
    rank = {None: 0, 0: 1, -1: 2, 1: 3}
    for lab, value in new.items():
        if rank[value] > rank[labels[lab]]:
            labels[lab] = value


def write_report(study: Study) -> tuple[str, Labels]:
    """The radiologist's report for `study` and the CheXpert labels its sentences assert."""
    rng = study_rng(study.seed, STREAM_REPORT, study.index, study.style)
    normal = templates()
    labels: Labels = dict.fromkeys(CHEXPERT_LABELS)
    sections: dict[str, list[str]] = {s: [] for s in _SECTION_ORDERS[0]}
    impressions = []
    present = {f.kind for f in study.findings}
    section_of = {"cardiomegaly": "heart", "effusion": "pleura", "pneumothorax": "pleura", "fracture": "bones"}
    for f in sorted(study.findings, key=lambda f: _IMPRESSION_ORDER.index(f.kind)):
        if f.kind == "devices":
            written, impression, new = _devices_text(f, rng)
            sections["devices"] += written
        else:
            sentence, impression, new = _finding_text(f, rng)
            sections[section_of.get(f.kind, "lungs")].append(sentence)
        impressions.append(impression)
        _merge(labels, new)
    for sentence, new, section in _negations(study, rng):
        sections[section].append(sentence)
        _merge(labels, new)
    if not present & _LUNGS_NOT_CLEAR and rng.random() < 0.8:
        sections["lungs"].insert(0, pick(rng, normal["clear_lungs"]))
    if "edema" not in present and rng.random() < 0.2:
        sections["lungs"].append(pick(rng, normal["normal_vessels"]))
    if "fracture" not in present and rng.random() < 0.3:
        sections["bones"].append(pick(rng, normal["normal_bones"]))
    labels["No Finding"] = None if any(v in (1, -1) for k, v in labels.items() if k != "Support Devices") else 1
    if not present - {"devices", "fracture"}:
        impressions.append(pick(rng, normal["no_acute"][study.style]))
    return _assemble(study, sections, impressions, rng), labels


def _assemble(study: Study, sections: dict, impressions: list[str], rng) -> str:
    order = list(pick(rng, _SECTION_ORDERS))
    if rng.random() < 0.2:
        rng.shuffle(order)
    findings = [s for name in order for s in sections[name]]
    if rng.random() < (0.4 if study.style == "mimic_cxr" else 0.25):
        findings.insert(0, pick(rng, templates()["views"][study.style][str(study.views)]))
    numbered = len(impressions) > 1 and rng.random() < (0.4 if study.style == "mimic_cxr" else 0.7)
    impression = " ".join(f"{i}. {s}" for i, s in enumerate(impressions, 1)) if numbered else " ".join(impressions)
    if study.style == "mimic_cxr" and rng.random() < 0.55:
        return f"FINDINGS: {' '.join(findings)}\n\nIMPRESSION: {impression}"
    return f"{' '.join(findings)} {impression}"
