"""Benchmark cleaning on real IU-Xray report text; expected strings are checked by hand."""

import json
from pathlib import Path

import pytest

from r2g.data.reports import clean_report
from r2g.errors import R2GError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray_reports_train_val.json"


@pytest.fixture(scope="module")
def real_reports():
    if not REAL.exists():
        pytest.skip(f"real report text not found at {REAL}")
    d = json.loads(REAL.read_text())
    return {e["id"]: e["report"] for split in ("train", "val") for e in d[split]}


# (raw, expected) taken from the real IU-Xray annotation, cleaned by hand.
REAL_CASES = [
    (
        "XXXX XXXX and lateral chest examination was obtained. The heart silhouette is normal in size and "
        "contour. Aortic XXXX appear unremarkable. Lungs demonstrate no acute findings. There is no effusion or "
        "pneumothorax. 1. No acute pulmonary disease.",
        "xxxx xxxx and lateral chest examination was obtained . the heart silhouette is normal in size and "
        "contour . aortic xxxx appear unremarkable . lungs demonstrate no acute findings . there is no effusion or "
        "pneumothorax . no acute pulmonary disease .",
    ),
    (
        # trailing ". ." keeps an empty sentence: the famous double space before the last " ."
        "The cardiomediastinal silhouette and pulmonary vasculature are within normal limits in size. The lungs "
        "are clear of focal airspace disease, pneumothorax, or pleural effusion. There are no acute bony findings. "
        "No acute cardiopulmonary findings. .",
        "the cardiomediastinal silhouette and pulmonary vasculature are within normal limits in size . the lungs "
        "are clear of focal airspace disease pneumothorax or pleural effusion . there are no acute bony findings . "
        "no acute cardiopulmonary findings .  .",
    ),
]


@pytest.mark.parametrize("raw,expected", REAL_CASES)
def test_iu_real_reports(raw, expected):
    assert clean_report(raw, "iu_xray") == expected


def test_real_cases_come_from_the_real_file(real_reports):
    assert {raw for raw, _ in REAL_CASES} <= set(real_reports.values())


def test_iu_deletes_colon_to_bracket_range_but_keeps_hyphen():
    # ':' .. '[' is ': ; < = > ? @ A-Z [' ; '-' and digits survive.
    raw = "Findings: T-spine <2 cm> = ok? @left [x] {y} 50% a&b c+d e_f."
    assert clean_report(raw, "iu_xray") == "findings t-spine 2 cm  ok left x y 50 ab cd ef ."


def test_mimic_keeps_colon_with_space_and_hyphen():
    raw = "FINDINGS: Mild  left-sided   effusion.\nIMPRESSION: Small effusion."
    # newline -> space, spaces collapsed, ':' gets a space before it and is kept
    assert clean_report(raw, "mimic_cxr") == "findings : mild left-sided effusion . impression : small effusion ."


def test_numbering_rules():
    raw = "1. No pneumothorax. 2. Small effusion. 3. Cardiomegaly."
    assert clean_report(raw, "iu_xray") == "no pneumothorax . small effusion . cardiomegaly ."
    # " 2. " without a preceding period also becomes a sentence break
    assert clean_report("Clear lungs 2. Normal heart.", "iu_xray") == "clear lungs . normal heart ."


def test_double_periods_collapse_three_passes_only():
    # 9 periods -> 5 -> 3 -> 2 after three passes of '..' -> '.'; the rest is deleted per sentence.
    assert clean_report("Clear..", "iu_xray") == "clear ."
    assert clean_report("a......... b", "iu_xray") == "a . b ."
    # ". ." is two sentence breaks around an empty sentence, which is kept.
    assert clean_report("a. . b", "iu_xray") == "a .  . b ."


def test_mimic_underscores_and_quotes():
    raw = 'Compared to ___, the "tube" is in place / unchanged.'
    assert clean_report(raw, "mimic_cxr") == "compared to  the tube is in place  unchanged ."


def test_every_real_report_cleans_to_the_convention(real_reports):
    for rid, raw in real_reports.items():
        out = clean_report(raw, "iu_xray")
        assert out.endswith(" ."), rid
        assert out == out.lower(), rid
        assert not set(out) & set(":;<=>?@[]{}(),\"'/\\"), (rid, out)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(R2GError, match="unknown dataset 'chexpert'.*iu_xray, mimic_cxr"):
        clean_report("x", "chexpert")
