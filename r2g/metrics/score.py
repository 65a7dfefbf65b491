"""Score generated reports: read prediction/reference files, then NLG and clinical-efficacy metrics together.

Two file layouts are read:
- R2Gen's: a predictions JSON `{id: [text]}` and a references JSON `{id: [text]}` (two files);
- generation output: one JSONL file, one `{"id", "prediction", "reference"}` object per line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from r2g.errors import R2GError
from r2g.metrics.bootstrap import CONFIDENCE, StudyStats, check_resamples, intervals
from r2g.metrics.chexpert import load_labeler
from r2g.metrics.clinical import ce_study_stats, compute_ce
from r2g.metrics.model_based import ModelMetrics, check_folders, model_study_stats, score_model_based
from r2g.metrics.nlg import check_pairs, compute_nlg_with_stats


def load_pairs(pred_path: str | Path, ref_path: str | Path | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(refs, preds), both id -> text. With `ref_path`, two R2Gen `{id: [text]}` JSON files; without, one JSONL."""
    if ref_path is None:
        return _read_jsonl(Path(pred_path))
    refs, preds = _read_r2gen(Path(ref_path)), _read_r2gen(Path(pred_path))
    try:
        check_pairs(refs, preds)
    except R2GError as e:
        raise R2GError(f"{pred_path} and {ref_path}: {e}") from None
    return refs, preds


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise R2GError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise R2GError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_r2gen(path: Path) -> dict[str, str]:
    """An R2Gen result file: a JSON object mapping each id to a one-element list of text."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        hint = ""
        if path.suffix == ".jsonl":
            hint = " (one object per line is JSONL: pass it alone, without a reference file)"
        raise R2GError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}{hint}") from None
    if not isinstance(data, dict):
        raise R2GError(f"{path}: expected a JSON object {{id: [text]}}, found a {type(data).__name__}")
    texts = {}
    for key, value in data.items():
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            raise R2GError(f"{path}: id {key!r} must map to [text] (a list holding one string), found {value!r:.80}")
        texts[key] = value
    return texts


def _read_jsonl(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A generation file: one {"id", "prediction", "reference"} object per line; blank lines are skipped."""
    text = _read_text(path)
    if _is_r2gen_file(text):
        raise R2GError(f"{path}: an R2Gen {{id: [text]}} file, not JSONL: pass the reference file too")
    refs, preds = {}, {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise R2GError(f"{path}, line {lineno}: invalid JSON ({e.msg}); expected one "
                           '{"id", "prediction", "reference"} object per line') from None
        if not isinstance(row, dict):
            raise R2GError(f"{path}, line {lineno}: expected a JSON object, found a {type(row).__name__}")
        missing = [key for key in ("id", "prediction", "reference") if key not in row]
        if missing:
            raise R2GError(f"{path}, line {lineno}: missing key(s) {', '.join(missing)}")
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            raise R2GError(f"{path}, line {lineno}: 'id' must be a string or an integer, found {row['id']!r:.80}")
        for key in ("prediction", "reference"):
            if not isinstance(row[key], str):
                raise R2GError(f"{path}, line {lineno}: '{key}' must be a string, found {row[key]!r:.80}")
        rid = str(row["id"])
        if rid in refs:
            raise R2GError(f"{path}, line {lineno}: id {rid!r} appears twice; each report must appear once")
        refs[rid], preds[rid] = row["reference"], row["prediction"]
    if not refs:
        raise R2GError(f"{path}: no reports in the file")
    return refs, preds


def _is_r2gen_file(text: str) -> bool:
    """A whole-file JSON object that is no JSONL row (JSONL with 2+ rows is not valid JSON at all)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and not {"id", "prediction", "reference"} & set(data)


@dataclass(frozen=True)
class Scored:
    """One system's scores on a set of studies, with what resampling them needs."""

    metrics: dict  # what `score` returns, without intervals
    stats: list[StudyStats]  # every metric's per-study statistics, in `ids` order (r2g.metrics.bootstrap)
    ids: list[str]
    ref_labels: list[dict]
    pred_labels: list[dict]


def score_studies(refs: dict[str, str], preds: dict[str, str], meteor: bool = True,
                  labeler: str | Callable[[list[str]], list[dict]] = "rules", labeler_weights: str | None = None,
                  models: ModelMetrics = ModelMetrics(), log=lambda message: None) -> Scored:
    """NLG and CE scores of `preds` against `refs`, and their per-study statistics, from one run of each scorer."""
    check_pairs(refs, preds)
    # First: a bad labeler or metric folder fails before the slow NLG part.
    label = labeler if callable(labeler) else load_labeler(labeler, labeler_weights)
    check_folders(models)
    ids = list(refs)
    metrics: dict = {"num_reports": len(ids)}
    nlg, stats = compute_nlg_with_stats(refs, preds, meteor=meteor)
    metrics.update(nlg)
    ref_labels = label([refs[k] for k in ids])
    pred_labels = label([preds[k] for k in ids])
    metrics.update(compute_ce(ref_labels, pred_labels))
    stats += ce_study_stats(ref_labels, pred_labels)
    if models.any():
        found = score_model_based(refs, preds, models, log=log)
        metrics.update(found)
        stats += model_study_stats(found, ids)
    return Scored(metrics, stats, ids, ref_labels, pred_labels)


def interval_record(scored: Scored, resamples: int, seed: int = 0) -> dict:
    """{"intervals": {key: [low, high]}, "bootstrap": how they were formed}: what metrics.json holds."""
    found = intervals(scored.stats, len(scored.ids), resamples, seed)
    return {
        "intervals": {key: [low, high] for key, (low, high) in found.items()},
        "bootstrap": {
            "resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "unit": "study",
            "interval": "percentile (2.5th and 97.5th of the resampled values)",
            "recomputed": {", ".join(metric.keys): metric.method for metric in scored.stats},
        },
    }


def score(
    refs: dict[str, str],
    preds: dict[str, str],
    meteor: bool = True,
    labeler: str | Callable[[list[str]], list[dict]] = "rules",
    labeler_weights: str | None = None,
    per_report_labels: bool = False,
    bootstrap: int = 0,
    seed: int = 0,
    models: ModelMetrics = ModelMetrics(),
    log=lambda message: None,
) -> dict:
    """NLG metrics (BLEU_1..4, METEOR, ROUGE_L, CIDEr) and CE metrics (ce_*, ce5_*, per_label) in one dict.

    Both sides are labelled with `labeler` ("rules" or "chexbert" with `labeler_weights`, or one `load_labeler`
    already returned). With `per_report_labels`, "labels" maps each id to {"reference": labels, "prediction":
    labels}. `models` names the model-based metrics to add (r2g.metrics.model_based: their keys,
    `metric_weights` and `per_study`). With `bootstrap` N > 0, "intervals" holds each key's 95 % interval over N resamples of the studies
    drawn with `seed`, and "bootstrap" says how (`interval_record`); the point values do not change.
    """
    check_resamples(bootstrap)
    scored = score_studies(refs, preds, meteor, labeler, labeler_weights, models, log)
    results = dict(scored.metrics)
    if bootstrap:
        results.update(interval_record(scored, bootstrap, seed))
    if per_report_labels:
        results["labels"] = {k: {"reference": r, "prediction": p}
                             for k, r, p in zip(scored.ids, scored.ref_labels, scored.pred_labels)}
    return results
