"""Clinical efficacy (CE): how well the labels of generated reports match those of the references.

Two conventions, each labelled in the keys (r2g.metrics.keys): only 1 (positive) counts as positive, and 0,
-1 (uncertain) and None (blank) as negative, the R2Gen-family `compute_ce` convention; and the `upos`
variant, where -1 also counts as positive on both sides (LLaVA-Rad and CheXagent publish both). All scores
are computed with numpy (no sklearn) and equal sklearn's `precision_recall_fscore_support(...,
zero_division=0)`: a ratio with a zero denominator is 0.
"""

from __future__ import annotations

import numpy as np

from r2g.errors import R2GError
from r2g.labels import CHEXPERT_5, CHEXPERT_LABELS, POSITIVE, UNCERTAIN
from r2g.metrics.bootstrap import StudyMean, StudyStats, SummedStats


def _binary(labels: list[dict], side: str, positive: tuple = (POSITIVE,)) -> np.ndarray:
    """(reports, 14) boolean matrix: True where a label is in `positive` (by default exactly 1)."""
    for i, row in enumerate(labels):
        missing = [name for name in CHEXPERT_LABELS if name not in row]
        if missing:
            raise R2GError(f"{side} labels of report {i} lack {missing[0]!r}: "
                           "every report needs all 14 CheXpert labels")
    return np.array([[row[name] in positive for name in CHEXPERT_LABELS] for row in labels], dtype=bool).reshape(
        len(labels), len(CHEXPERT_LABELS)
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 0 where den is 0 (sklearn's zero_division=0)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _prf(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 from counts (arrays or scalars); F1 = 2tp / (2tp + fp + fn) as sklearn."""
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def _counts(ref: np.ndarray, pred: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives, false negatives per label (axis 0) or per report (axis 1)."""
    return (ref & pred).sum(axis), (~ref & pred).sum(axis), (ref & ~pred).sum(axis)


def _micro_macro(ref: np.ndarray, pred: np.ndarray, prefix: str) -> dict[str, float]:
    tp, fp, fn = _counts(ref, pred, axis=0)
    scores = {}
    for name, value in zip(("precision", "recall", "f1"), _prf(tp.sum(), fp.sum(), fn.sum())):
        scores[f"{prefix}_micro_{name}"] = float(value)
    # Macro: the mean over every column, a column without any positive counting 0 (as sklearn).
    for name, per_label in zip(("precision", "recall", "f1"), _prf(tp, fp, fn)):
        scores[f"{prefix}_macro_{name}"] = float(per_label.mean())
    return scores


def compute_ce(ref_labels: list[dict], pred_labels: list[dict]) -> dict[str, float | dict]:
    """CE metrics of predicted-report labels against reference-report labels (both 14-label dicts per report).

    Returns
    - `ce_micro_{precision,recall,f1}`, `ce_macro_{...}`: over the 14 labels (No Finding included);
    - `ce5_micro_{...}`, `ce5_macro_{...}`: over CHEXPERT_5 (Cardiomegaly, Edema, Consolidation,
      Atelectasis, Pleural Effusion), as LLaVA-Rad / CheXagent report;
    - `ce_upos_{micro,macro}_{...}`, `ce5_upos_{micro,macro}_{...}`: the same four with uncertain (-1)
      counted as positive in both the references and the predictions (LLaVA-Rad / CheXagent's second variant);
    - `ce_example_{precision,recall,f1}`: PromptMRG's example-based scores: precision, recall and F1 of each
      report's set of positive labels, averaged over reports. A report whose reference and prediction have
      no positive label at all scores 0 on all three, as in PromptMRG (its counts are 0/0, taken as 0);
    - `per_label`: {label: {precision, recall, f1, support}}, support = reference positives.
    """
    if len(ref_labels) != len(pred_labels):
        raise R2GError(f"{len(ref_labels)} reference label rows but {len(pred_labels)} prediction rows: "
                       "label the same reports on both sides")
    if not ref_labels:
        raise R2GError("no reports to score: the label lists are empty")
    ref, pred = _binary(ref_labels, "reference"), _binary(pred_labels, "prediction")

    scores: dict[str, float | dict] = {}
    five = [CHEXPERT_LABELS.index(name) for name in CHEXPERT_5]
    upos = (POSITIVE, UNCERTAIN)
    conventions = {"": (ref, pred),
                   "_upos": (_binary(ref_labels, "reference", upos), _binary(pred_labels, "prediction", upos))}
    for tag, (ref_t, pred_t) in conventions.items():
        scores.update(_micro_macro(ref_t, pred_t, f"ce{tag}"))
        scores.update(_micro_macro(ref_t[:, five], pred_t[:, five], f"ce5{tag}"))

    for name, per_report in zip(("precision", "recall", "f1"), _prf(*_counts(ref, pred, axis=1))):
        scores[f"ce_example_{name}"] = float(per_report.mean())

    precision, recall, f1 = _prf(*_counts(ref, pred, axis=0))
    scores["per_label"] = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(ref[:, i].sum())}
        for i, name in enumerate(CHEXPERT_LABELS)
    }
    return scores


def ce_study_stats(ref_labels: list[dict], pred_labels: list[dict]) -> list[StudyStats]:
    """Per-study statistics of every `ce_*` / `ce5_*` key of `compute_ce` (r2g.metrics.bootstrap): each study's
    tp, fp and fn per label, summed over a resample for the micro and macro scores; each study's example-based
    precision, recall and F1, averaged."""
    if len(ref_labels) != len(pred_labels) or not ref_labels:
        raise R2GError(f"{len(ref_labels)} reference label rows but {len(pred_labels)} prediction rows: "
                       "label the same non-empty set of reports on both sides")
    stats: list[StudyStats] = []
    upos = (POSITIVE, UNCERTAIN)
    for tag, positive in (("", (POSITIVE,)), ("_upos", upos)):
        ref, pred = _binary(ref_labels, "reference", positive), _binary(pred_labels, "prediction", positive)
        counts = np.concatenate([(ref & pred), (~ref & pred), (ref & ~pred)], axis=1).astype(float)  # (N, 3 * 14)
        keys = tuple(f"{prefix}_{average}_{name}" for prefix in (f"ce{tag}", f"ce5{tag}")
                     for average in ("micro", "macro") for name in ("precision", "recall", "f1"))
        stats.append(SummedStats(keys, counts, _micro_macro_from_sums,
                                 "micro and macro scores of the resample's summed per-label tp, fp, fn"))
    ref, pred = _binary(ref_labels, "reference"), _binary(pred_labels, "prediction")
    per_report = np.stack(_prf(*_counts(ref, pred, axis=1)), axis=1)
    stats.append(StudyMean(tuple(f"ce_example_{name}" for name in ("precision", "recall", "f1")), per_report))
    return stats


def _micro_macro_from_sums(sums: np.ndarray) -> np.ndarray:
    """(B, 3 * 14) summed tp, fp, fn per label -> (B, 12): micro P, R, F1 and macro P, R, F1 over the 14 labels,
    then the same over CHEXPERT_5, in `ce_study_stats`' key order."""
    n = len(CHEXPERT_LABELS)
    tp, fp, fn = sums[:, :n], sums[:, n:2 * n], sums[:, 2 * n:]
    five = [CHEXPERT_LABELS.index(name) for name in CHEXPERT_5]
    columns = []
    for cols in (slice(None), five):
        t, f, m = tp[:, cols], fp[:, cols], fn[:, cols]
        columns += list(_prf(t.sum(1), f.sum(1), m.sum(1)))
        columns += [per_label.mean(1) for per_label in _prf(t, f, m)]
    return np.stack(columns, axis=1)
