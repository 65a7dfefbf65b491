"""95 % intervals by bootstrap over studies, and the paired bootstrap that compares two systems.

A resample is N studies drawn with replacement from the N of the test set; on it, every metric is recomputed
the way it is defined on a test set (BLEU from summed clipped n-gram counts and lengths, CIDEr-D with document
frequencies from the resampled references, CE micro F1 from summed tp/fp/fn, ROUGE-L as the mean of its
per-study scores, ...). The scorers run once: each metric caches per-study statistics, and a resample only
re-weights them.

The interface a metric implements (each metric family, e.g. BLEU-1..4, is one `StudyStats`):

    class StudyStats(Protocol):
        keys: tuple[str, ...]   # the metrics.json keys it gives, e.g. ("BLEU_1", ..., "BLEU_4")
        method: str             # one line: how a resample is scored (written to metrics.json)
        def values(self, weights: np.ndarray) -> np.ndarray:
            '''weights: (B, N) floats, how many times each of the N studies (in one id order shared by every
            metric of a score) is drawn in each of B resamples; a row of ones is the test set itself.
            Returns (B, len(keys)): each key's corpus value on each resample.'''

Two ready-made kinds cover most metrics:
- `SummedStats(keys, stats, finish, method)`: the corpus value is `finish` of per-study statistics summed over
  the studies (BLEU, METEOR's alignment statistics, CE's tp/fp/fn): `values(w) = finish(w @ stats)`, with
  `stats` (N, k) and `finish` (B, k) -> (B, len(keys));
- `StudyMean(keys, scores, method)`: the corpus value is the mean of per-study scores (ROUGE-L, CE
  example-based; BERTScore, RadGraph F1, RaTEScore, GREEN, RadCliQ): `values(w) = w @ scores / N`, with
  `scores` (N, len(keys)).
CIDEr-D has its own (r2g.metrics.nlg_stats.CiderStats), as its idf depends on which references are drawn.

Contract, checked by tests for every metric: `values(ones((1, N)))` equals the scorer's reported value to float
precision, so an interval always sits around the very number r2g reports.

Intervals are percentile intervals (the 2.5th and 97.5th percentiles of the resampled values, numpy's linear
interpolation), as LLaVA-Rad publishes them. Resamples are drawn from `numpy.random.default_rng(seed)`: the same
studies, seed and count give the same interval.

`paired` compares two systems on the same studies: each resample draws the same studies for both, so the
interval of B − A holds only the variation of the difference. Its p-value comes from the same resamples (see
`paired`), so interval and test cannot tell different stories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Protocol

import numpy as np

from r2g.errors import R2GError

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000
# Resamples scored at a time: bounds the (chunk, N) and CIDEr's (chunk, n-grams) arrays.
CHUNK = 50


class StudyStats(Protocol):
    keys: tuple[str, ...]
    method: str

    def values(self, weights: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SummedStats:
    """A corpus metric that is a function of per-study statistics summed over the test set."""

    keys: tuple[str, ...]
    stats: np.ndarray  # (N, k)
    finish: Callable[[np.ndarray], np.ndarray]  # (B, k) summed -> (B, len(keys))
    method: str

    def values(self, weights: np.ndarray) -> np.ndarray:
        return self.finish(np.asarray(weights, dtype=float) @ self.stats)


@dataclass(frozen=True)
class StudyMean:
    """A corpus metric that is the mean of per-study scores."""

    keys: tuple[str, ...]
    scores: np.ndarray  # (N, len(keys))
    method: str = "mean of per-study scores over the resampled studies"

    def values(self, weights: np.ndarray) -> np.ndarray:
        weights = np.asarray(weights, dtype=float)
        # Summed as numpy's mean sums (pairwise, not a BLAS dot): the full sample gives the scorer's mean bit for bit.
        sums = np.stack([(weights * column).sum(1) for column in self.scores.T], axis=1)
        return sums / weights.sum(1, keepdims=True)


def resample_weights(n: int, samples: int, seed: int = 0) -> np.ndarray:
    """(samples, n): how many times each study is drawn in each resample of n studies with replacement."""
    draws = np.random.default_rng(seed).integers(n, size=(samples, n))
    flat = (draws + n * np.arange(samples)[:, None]).ravel()  # study index within all resamples' counts
    return np.bincount(flat, minlength=samples * n).reshape(samples, n).astype(float)


def all_resamples(n: int) -> np.ndarray:
    """(n**n, n): the weights of every ordered draw of n studies from n, each equally likely (tests, tiny n)."""
    weights = np.zeros((n**n, n))
    for row, draw in enumerate(product(range(n), repeat=n)):
        np.add.at(weights[row], list(draw), 1.0)
    return weights


def resampled_values(metrics: Sequence[StudyStats], weights: np.ndarray) -> dict[str, np.ndarray]:
    """{key: (B,) values on each resample} for every key of `metrics`, scored CHUNK resamples at a time."""
    out: dict[str, list[np.ndarray]] = {}
    for metric in metrics:
        parts = [metric.values(weights[i:i + CHUNK]) for i in range(0, len(weights), CHUNK)]
        table = np.concatenate(parts) if parts else np.zeros((0, len(metric.keys)))
        for j, key in enumerate(metric.keys):
            out.setdefault(key, []).append(table[:, j])
    return {key: np.concatenate(v) for key, v in out.items()}


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def check_resamples(samples: int) -> None:
    if samples < 0:
        raise R2GError(f"--bootstrap {samples}: pass a number of resamples (1,000 is usual), or 0 for none")


def intervals(metrics: Sequence[StudyStats], n: int, samples: int = DEFAULT_RESAMPLES, seed: int = 0,
              confidence: float = CONFIDENCE) -> dict[str, tuple[float, float]]:
    """{key: (low, high)}: the percentile interval of every key of `metrics` over `samples` resamples."""
    check_resamples(samples)
    if samples == 0:
        return {}
    values = resampled_values(metrics, resample_weights(n, samples, seed))
    return {key: percentile_interval(v, confidence) for key, v in values.items()}


@dataclass(frozen=True)
class Difference:
    """B − A on one metric: the observed difference, its paired-bootstrap interval and two-sided p-value."""

    key: str
    a: float
    b: float
    delta: float
    low: float
    high: float
    p: float


def paired(metrics_a: Sequence[StudyStats], metrics_b: Sequence[StudyStats], n: int,
           samples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE,
           weights: np.ndarray | None = None,
           points: tuple[dict[str, float], dict[str, float]] | None = None) -> list[Difference]:
    """B − A for every key both score, from resamples that draw the same studies for both systems.

    The interval is the percentile interval of the resampled differences d*. The p-value tests "no difference"
    with the same resamples (paired bootstrap test, Efron & Tibshirani 1993, section 16.4; Koehn 2004): d* shifted
    to centre on 0 is the distribution of the difference under no difference, and p is the share of it at least
    as far from 0 as the observed d, counting the observed one: p = (1 + #{|d* − d| ≥ |d|}) / (B + 1).
    Identical systems give d* = d = 0, so an interval of exactly [0, 0] and p = 1.
    `weights` (B, n) replaces the seeded draw (tests enumerate every resample). `points` (A's and B's scores as
    their scorers reported them) replaces the full-sample values of the statistics, which equal them to float
    precision.
    """
    if weights is None:
        check_resamples(samples)
        if samples == 0:
            raise R2GError("a paired comparison needs resamples: pass --bootstrap 1 or more (1,000 is usual)")
        weights = resample_weights(n, samples, seed)
    if points is None:
        full = np.ones((1, n))
        points = tuple({k: float(v[0]) for k, v in resampled_values(m, full).items()} for m in (metrics_a, metrics_b))
    va, vb = resampled_values(metrics_a, weights), resampled_values(metrics_b, weights)
    out = []
    for key in (k for k in va if k in vb):
        a, b = float(points[0][key]), float(points[1][key])
        delta = b - a
        d = vb[key] - va[key]
        low, high = percentile_interval(d, confidence)
        p = (1 + int(np.sum(np.abs(d - delta) >= abs(delta)))) / (len(d) + 1)
        out.append(Difference(key, a, b, delta, low, high, p))
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, made monotone, capped at 1), in the input order."""
    m = len(pvalues)
    order = np.argsort(pvalues, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return [float(p) for p in adjusted]
