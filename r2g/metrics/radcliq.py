"""RadCliQ-v1 (Yu et al., 2023, "Evaluating progress in automatic chest X-ray radiology report generation",
Patterns; rajpurkarlab/CXR-Report-Metric): a fixed linear combination of four per-report metrics, each
standardised first. Lower is better (it predicts the number of errors a radiologist would find).

Inputs per report, in the published order:
1. `radgraph_combined`: mean of RadGraph entity F1 and relation F1 (r2g.metrics.radgraph.entity_relation_f1);
2. BERTScore F1, distilroberta-base, baseline-rescaled (r2g.metrics.bertscore);
3. SembScore: cosine of the CheXbert [CLS] embeddings of the two reports;
4. BLEU-2 of the report pair (`bleu2`).
The standardisation (mean, scale) and coefficients (last: intercept) are those of CXR-Report-Metric's
`CXRMetric/radcliq-v1.pkl` (a StandardScaler and a linear model), as transcribed in RadEval (jbdel/RadEval,
radcliq). BLEU-2's coefficient is ~4e-12: it does not move the score, so r2g's plain sentence BLEU-2 (no
smoothing) in place of the `fast_bleu` package's cannot either.
The ReXrank leaderboard (rajpurkarlab/ReXrank-metric) computes these four through CXR-Report-Metric and ranks
by 1/RadCliQ-v1. The published model was fit with the original RadGraph (model type `radgraph`); pass that one for numbers
comparable to the literature.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

MEAN = np.array([0.53792312, 0.61757256, 0.76479421, 0.44738335])
SCALE = np.array([0.30282584, 0.22430938, 0.25394391, 0.29892717])
COEFFICIENTS = np.array([-3.77083683e-01, -3.70300100e-01, -2.52616218e-01, 4.31504841e-12])
INTERCEPT = 2.46655256e-10


def _tokens(text: str) -> list[str]:
    """CXR-Report-Metric's BLEU tokens: lowercase, a space before each period, split on spaces."""
    return [t for t in text.lower().replace(".", " .").split(" ") if t]


def bleu2(reference: str, candidate: str) -> float:
    """Sentence BLEU-2: geometric mean of the clipped unigram and bigram precisions times the brevity
    penalty; 0 when either precision is 0."""
    ref, cand = _tokens(reference), _tokens(candidate)
    if not cand:
        return 0.0
    log_precision = 0.0
    for n in (1, 2):
        grams = Counter(tuple(cand[i:i + n]) for i in range(len(cand) - n + 1))
        ref_grams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        hits = sum(min(count, ref_grams[g]) for g, count in grams.items())
        if not hits:
            return 0.0
        log_precision += math.log(hits / sum(grams.values())) / 2
    penalty = 1.0 if len(cand) > len(ref) else math.exp(1 - len(ref) / len(cand))
    return penalty * math.exp(log_precision)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (reports, dim) arrays (0 for a zero vector)."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(1), norms, out=np.zeros(len(a)), where=norms > 0)


def radcliq_v1(radgraph_combined, bertscore, semb, bleu) -> list[float]:
    """RadCliQ-v1 of each report from its four inputs (sequences of the same length)."""
    x = np.column_stack([radgraph_combined, bertscore, semb, bleu]).astype(float)
    return [float(v) for v in ((x - MEAN) / SCALE) @ COEFFICIENTS + INTERCEPT]
