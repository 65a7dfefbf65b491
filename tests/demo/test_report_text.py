"""Sampled studies and their reports: labels that agree with the report text and with what was drawn,
prevalence as specified, and wording varied enough that text alone cannot score well."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from r2g.data.reports import clean_report
from r2g.demo.report_text import _NEGATION_RATE, FINDING_LABELS, OPACITY_WORDS, templates, write_report
from r2g.demo.sample import PREVALENCE, STYLES, sample_study
from r2g.labels import CHEXPERT_LABELS

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
    for style in STYLES:
        for index in range(1200):
            study = sample_study(7, index, style)
            out.append((study, *write_report(study)))
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
            own, *shared = FINDING_LABELS[f.kind]  # shared: Lung Opacity, also set by others
            assert labels[own] == (1 if f.certain else -1), (f, labels)
            assert all(labels[label] in ((1,) if f.certain else (1, -1)) for label in shared), (f, labels)
            if f.kind in FINDING_WORDS and f.side in ("right", "left"):
                about = [s for s in sentences(report) if mentions(s, FINDING_WORDS[f.kind])]
                assert about and all(f.side in s for s in about), (f, report)
        drawn = {label for f in study.findings for label in FINDING_LABELS[f.kind]}
        present = {k for k, v in labels.items() if v in (1, -1)} - {"No Finding"}
        assert drawn <= present and present - drawn <= {"Lung Opacity"}, (drawn, present)
        if "Lung Opacity" in present - drawn:  # only from a drawn finding described as an opacity
            assert OPACITY_WORDS.search(report), report


def test_prevalence_and_variety(studies):
    for style in STYLES:
        subset = [(s, r, lab) for s, r, lab in studies if s.style == style]
        normal = sum(not s.findings for s, _, _ in subset) / len(subset)
        assert 0.33 <= normal <= 0.48, (style, normal)
        kinds = Counter(f.kind for s, _, _ in subset for f in s.findings)
        for kind, p in PREVALENCE[style].items():
            assert abs(kinds[kind] / len(subset) - p) < 0.04, (style, kind)
        certain = [f.certain for s, _, _ in subset for f in s.findings if f.kind != "devices"]
        assert 0.12 < 1 - np.mean(certain) < 0.28  # ~FAINT_RATE drawn faintly and hedged
        # Reports differ: no template dominates, so text alone cannot score well.
        top_count = Counter(r for _, r, _ in subset).most_common(1)[0][1]
        assert top_count < 0.03 * len(subset)
        assert all(r.strip() and clean_report(r, style) for _, r, _ in subset)
    single = [s.views == 1 for s, _, _ in studies if s.style == "iu_xray"]
    assert 0.05 < np.mean(single) < 0.16
    assert all(s.views == 1 for s, _, _ in studies if s.style == "mimic_cxr")
    mimic_reports = [r for s, r, _ in studies if s.style == "mimic_cxr"]
    assert any(r.startswith("FINDINGS:") and "\n\nIMPRESSION: " in r for r in mimic_reports)
    assert any("FINDINGS:" not in r for r in mimic_reports)


def test_templates_name_every_negated_finding():
    # The negation rates (code) and the negation sentences (sentences.json) must name the same findings,
    # in the same order: the order of the random draws.
    assert list(templates()["negations"]) == list(_NEGATION_RATE)
    for combined in templates()["combined_negations"]:
        assert set(combined["items"]) <= set(_NEGATION_RATE)
