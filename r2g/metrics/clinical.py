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


def micro_f1_gain(
    ref_labels: list[dict],
    pred_a: list[dict],
    pred_b: list[dict],
    labels: tuple[str, ...] = CHEXPERT_LABELS,
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """CE micro F1 (over `labels`) of system A minus system B on the same reports, with a 95% paired
    bootstrap interval: reports are drawn with replacement, the same draw for both systems, `samples` times.

    Returns {"gain", "low", "high"} (low/high: the 2.5th / 97.5th percentiles of the resampled gains).
    A gain whose interval excludes 0 is not an accident of which reports are in the test set.
    """
    if not (len(ref_labels) == len(pred_a) == len(pred_b)) or not ref_labels:
        raise R2GError(f"paired bootstrap needs the same non-empty reports on all sides: {len(ref_labels)} references, "
                       f"{len(pred_a)} and {len(pred_b)} predictions")
    columns = [CHEXPERT_LABELS.index(name) for name in labels]
    ref = _binary(ref_labels, "reference")[:, columns]

    def per_report_counts(pred: list[dict]) -> np.ndarray:  # (reports, 3): tp, fp, fn
        return np.stack(_counts(ref, _binary(pred, "prediction")[:, columns], axis=1), axis=1)

    def micro_f1(counts: np.ndarray) -> np.ndarray:  # counts (..., 3) summed over reports
        return _prf(counts[..., 0], counts[..., 1], counts[..., 2])[2]

    a, b = per_report_counts(pred_a), per_report_counts(pred_b)
    draws = np.random.default_rng(seed).integers(len(ref), size=(samples, len(ref)))
    resampled = micro_f1(a[draws].sum(1)) - micro_f1(b[draws].sum(1))
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"gain": float(micro_f1(a.sum(0)) - micro_f1(b.sum(0))), "low": float(low), "high": float(high)}
