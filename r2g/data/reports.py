"""Benchmark report cleaning, byte for byte as the R2Gen family computes its published numbers.

Every BLEU/METEOR/ROUGE/CIDEr figure of R2Gen, R2GenGPT and their successors is computed on reports
passed through R2Gen's `clean_report_{iu_xray,mimic_cxr}`; comparable numbers need the same strings,
quirks included:
- the "1. " removal also hits e.g. "grade 1. " mid-sentence;
- the IU-Xray character class contains the range ':' to '[' (a typo for ':' and '-' in the original),
  so it deletes ': ; < = > ? @', every capital letter (already lowercased) and '[', but keeps '-';
- empty sentences are kept (the original's emptiness test compares a string with a list, so it never
  drops anything), which turns "a. . b" into "a .  . b".
"""

from __future__ import annotations

import re

from r2g.config import DATASETS
from r2g.errors import R2GError


# Numbered impressions: "1. " disappears; "N. " for N = 2..5 becomes a sentence break.
_NUMBERING = [("1. ", "")] + [(f". {n}. ", ". ") for n in range(2, 6)] + [(f" {n}. ", ". ") for n in range(2, 6)]
_QUOTES_AND_SLASHES = ('"', "/", "\\", "'")

# Characters deleted from each sentence. IU-Xray's class includes the range ':'..'[' (see module doc).
_IU_DELETE = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_MIMIC_DELETE = re.compile(r"[.,?;*!%^&_+()\[\]{}]")


def _repeat_replace(text: str, old: str, new: str, times: int) -> str:
    """`str.replace` applied `times` times, as the original chains it (a bounded collapse, not a loop)."""
    for _ in range(times):
        text = text.replace(old, new)
    return text


def _clean_sentence(sentence: str, delete: re.Pattern) -> str:
    for ch in _QUOTES_AND_SLASHES:
        sentence = sentence.replace(ch, "")
    return delete.sub("", sentence.strip().lower())


def _finish(text: str, delete: re.Pattern, space_before_colon: bool = False) -> str:
    for old, new in _NUMBERING:
        text = text.replace(old, new)
    if space_before_colon:  # MIMIC only, and after the numbering rules, as in the original chain
        text = text.replace(":", " :")
    sentences = text.strip().lower().split(". ")
    return " . ".join(_clean_sentence(s, delete) for s in sentences) + " ."


def clean_iu_xray(text: str) -> str:
    return _finish(_repeat_replace(text, "..", ".", 3), _IU_DELETE)


def clean_mimic_cxr(text: str) -> str:
    text = text.replace("\n", " ")
    text = _repeat_replace(text, "__", "_", 7)
    text = _repeat_replace(text, "  ", " ", 6)
    text = _repeat_replace(text, "..", ".", 8)
    return _finish(text, _MIMIC_DELETE, space_before_colon=True)


def clean_report(text: str, dataset: str) -> str:
    """Clean a raw report as the R2Gen family does for `dataset` ("iu_xray" or "mimic_cxr")."""
    if dataset == "iu_xray":
        return clean_iu_xray(text)
    if dataset == "mimic_cxr":
        return clean_mimic_cxr(text)
    raise R2GError(f"unknown dataset '{dataset}' for report cleaning; choose one of {', '.join(DATASETS)}")
