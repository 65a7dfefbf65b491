"""The model-based report metrics, each from a local folder: which to run (`ModelMetrics`), and running them
(`score_model_based`). Install their packages with `pip install 'r2g[metrics]'`.

Output, merged into metrics.json by r2g.metrics.score:
- corpus keys (r2g.metrics.keys.MODEL_METRICS): each the mean over reports of a per-report score, except the
  CheXbert F1 keys, which are corpus-level (micro: summed counts over reports; macro: mean over labels);
- `metric_weights`: {key: which weights made it} — the folder name and one sha256 over its weight files;
- `per_study`: the per-report statistics the corpus keys are computed from, so a bootstrap over studies can
  recompute each key without re-running a model (r2g.metrics.bootstrap; `model_study_stats` builds them):
  `per_study[key] = {id: score}` for every mean-of-reports key — a `StudyMean((key,), scores)`, the key being
  the mean of these; and `per_study["chexbert_labels"] = {id: {"reference": labels, "prediction": labels}}`
  for the CheXbert keys — a `SummedStats(CHEXBERT_KEYS, chexbert_study_stats(refs, preds), chexbert_finish)`:
  per-study tp / fp / fn of each label, summed over a resample, then finished into micro / macro F1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from r2g.labels import CHEXPERT_5, CHEXPERT_LABELS, POSITIVE, UNCERTAIN
from r2g.metrics.clinical import _binary


CHEXBERT_HOLDS = "chexbert.pth (the CheXbert checkpoint) and bert-base-uncased/ (its config.json and vocab.txt)"


@dataclass(frozen=True)
class ModelMetrics:
    """Local folders of the model-based metrics; None = not run. RadCliQ-v1 runs when radgraph, bertscore and
    chexbert are all given."""

    radgraph: str | None = None
    bertscore: str | None = None
    ratescore: str | None = None
    chexbert: str | None = None
    green: str | None = None

    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


CHEXBERT_KEYS = ("chexbert_micro_f1", "chexbert_macro_f1", "chexbert5_micro_f1", "chexbert5_macro_f1",
                 "chexbert5_accuracy")
_FIVE = [CHEXPERT_LABELS.index(name) for name in CHEXPERT_5]


def chexbert_study_stats(ref_labels: list[dict], pred_labels: list[dict]) -> np.ndarray:
    """(reports, 44) per-report statistics of the CheXbert keys, f1chexbert's "rrg" mode (uncertain counts as
    positive): tp, fp, fn of each of the 14 labels, whether the 5 labels all agree, and 1 (the report count)."""
    upos = (POSITIVE, UNCERTAIN)
    ref, pred = _binary(ref_labels, "reference", upos), _binary(pred_labels, "prediction", upos)
    exact5 = (ref[:, _FIVE] == pred[:, _FIVE]).all(1, keepdims=True)
    return np.hstack([ref & pred, ~ref & pred, ref & ~pred, exact5, np.ones_like(exact5)]).astype(float)


def chexbert_finish(sums: np.ndarray) -> np.ndarray:
    """(B, 44) statistics summed over the reports of B (re)samples -> (B, 5) CHEXBERT_KEYS values: sklearn's
    micro F1 (2tp / (2tp + fp + fn) over all labels) and macro F1 (mean of the per-label F1, 0 for 0/0), as
    f1chexbert's classification_report, over 14 labels and over the 5, and the 5-label exact-match accuracy."""
    sums = np.atleast_2d(sums)
    n = len(CHEXPERT_LABELS)
    tp, fp, fn = sums[:, :n], sums[:, n:2 * n], sums[:, 2 * n:3 * n]

    def f1(tp, fp, fn):
        den = 2 * tp + fp + fn
        return np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)

    columns = []
    for cols in (slice(None), _FIVE):
        columns.append(f1(tp[:, cols].sum(1), fp[:, cols].sum(1), fn[:, cols].sum(1)))
        columns.append(f1(tp[:, cols], fp[:, cols], fn[:, cols]).mean(1))
    columns.append(sums[:, 3 * n] / sums[:, 3 * n + 1])
    return np.stack(columns, axis=1)


def chexbert_scores(ref_labels: list[dict], pred_labels: list[dict]) -> dict[str, float]:
    """The CheXbert keys (f1chexbert's report-generation scores) from CheXbert labels of both sides."""
    values = chexbert_finish(chexbert_study_stats(ref_labels, pred_labels).sum(0))[0]
    return {key: float(v) for key, v in zip(CHEXBERT_KEYS, values)}


def score_model_based(refs: dict[str, str], preds: dict[str, str], metrics: ModelMetrics,
                      log=lambda message: None) -> dict:
    """Corpus keys, `metric_weights` and `per_study` (module docstring) of every metric `metrics` names. Every folder
    is checked before any model loads."""
    from r2g.metrics import bertscore, radgraph, ratescore

    ids = list(refs)
    ref_texts, pred_texts = [refs[k] for k in ids], [preds[k] for k in ids]
    check_folders(metrics)
    results: dict = {"metric_weights": {}, "per_study": {}}

    def put(key: str, values: list[float], weights: dict) -> None:
        results[key] = float(np.mean(values))
        results["per_study"][key] = dict(zip(ids, values))
        results["metric_weights"][key] = weights

    radgraph_out = bert = semb = None
    if metrics.radgraph:
        log("RadGraph F1")
        scorer = radgraph.RadGraphScorer(metrics.radgraph)
        radgraph_out = scorer.score(ref_texts, pred_texts)
        for variant in radgraph.VARIANTS:
            put(f"radgraph_{variant}", radgraph_out["per_report"][variant], scorer.weights)
        combined = [radgraph.entity_relation_f1(*pair) if pair else 0.0 for pair in radgraph_out["annotations"]]
        put("radgraph_combined", combined, scorer.weights)
    if metrics.bertscore:
        log("BERTScore")
        scorer = bertscore.BERTScoreScorer(metrics.bertscore)
        bert = scorer.score(ref_texts, pred_texts)
        put("bertscore_f1", bert, scorer.weights)
    if metrics.chexbert:
        log("CheXbert")
        from r2g.metrics.chexpert import load_labeler
        from r2g.metrics.local_weights import fingerprint, offline

        with offline():
            model = load_labeler("chexbert", metrics.chexbert)
        ref_labels, ref_vectors = model.encode(ref_texts)
        pred_labels, pred_vectors = model.encode(pred_texts)
        weights = fingerprint(Path(metrics.chexbert))
        for key, value in chexbert_scores(ref_labels, pred_labels).items():
            results[key] = value
            results["metric_weights"][key] = weights
        results["per_study"]["chexbert_labels"] = {
            k: {"reference": r, "prediction": p} for k, r, p in zip(ids, ref_labels, pred_labels)}
        from r2g.metrics.radcliq import cosine

        semb = cosine(ref_vectors.numpy(), pred_vectors.numpy())
        put("sembscore", [float(v) for v in semb], weights)
    if metrics.ratescore:
        log("RaTEScore")
        scorer = ratescore.RaTEScorer(metrics.ratescore)
        put("ratescore", scorer.score(ref_texts, pred_texts), scorer.weights)
    if metrics.green:
        log("GREEN (LLM judge: slow)")
        from r2g.metrics.green import GreenScorer

        scorer = GreenScorer(metrics.green)
        put("green", scorer.score(ref_texts, pred_texts), scorer.weights)
    if radgraph_out is not None and bert is not None and semb is not None:
        from r2g.metrics.radcliq import bleu2, radcliq_v1

        bleu = [bleu2(r, p) for r, p in zip(ref_texts, pred_texts)]
        weights = {name: results["metric_weights"][key] for name, key in
                   (("radgraph", "radgraph_simple"), ("bertscore", "bertscore_f1"), ("chexbert", "sembscore"))}
        put("radcliq_v1", radcliq_v1(combined, bert, semb, bleu), weights)
    return results


def check_folders(metrics: ModelMetrics) -> None:
    """Every folder checked up front: a wrong last flag fails before the first model spends minutes."""
    from r2g.metrics import bertscore, radgraph
    from r2g.metrics.green import HOLDS as GREEN_HOLDS
    from r2g.metrics.local_weights import require_folder, require_hf_model
    from r2g.metrics.ratescore import HOLDS as RATE_HOLDS

    if metrics.radgraph:
        radgraph.check_folder(metrics.radgraph)
    if metrics.bertscore:
        bertscore.check_folder(metrics.bertscore)
    if metrics.chexbert:
        require_folder("--chexbert", metrics.chexbert, CHEXBERT_HOLDS,
                       ("chexbert.pth", "bert-base-uncased/config.json", "bert-base-uncased/vocab.txt"))
    if metrics.ratescore:
        folder = require_folder("--ratescore", metrics.ratescore, RATE_HOLDS, ("ner", "encoder"))
        require_hf_model("--ratescore", folder / "ner", RATE_HOLDS)
        require_hf_model("--ratescore", folder / "encoder", RATE_HOLDS)
    if metrics.green:
        require_hf_model("--green", metrics.green, GREEN_HOLDS)


MEAN_KEYS = ("radgraph_simple", "radgraph_partial", "radgraph_complete", "radgraph_combined", "bertscore_f1",
             "sembscore", "ratescore", "green", "radcliq_v1")


def model_study_stats(found: dict, ids: list[str]) -> list:
    """The bootstrap statistics (r2g.metrics.bootstrap) of the keys `score_model_based` returned: a StudyMean
    per mean-of-reports key and one SummedStats for the CheXbert keys, rows in `ids` order."""
    from r2g.metrics.bootstrap import StudyMean, SummedStats

    per_study = found["per_study"]
    stats: list = [StudyMean((key,), np.array([[per_study[key][k]] for k in ids], dtype=float))
                   for key in MEAN_KEYS if key in per_study]
    if "chexbert_labels" in per_study:
        labels = per_study["chexbert_labels"]
        counts = chexbert_study_stats([labels[k]["reference"] for k in ids], [labels[k]["prediction"] for k in ids])
        stats.append(SummedStats(CHEXBERT_KEYS, counts, chexbert_finish,
                                 "micro / macro F1 from per-study tp, fp, fn summed over the resampled studies"))
    return stats
