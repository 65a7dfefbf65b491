"""Per-study statistics of the language metrics (r2g.metrics.bootstrap's interface), taken from the scorers' own
per-study output so that a resample is scored without running a scorer again:

- BLEU-1..4: each study's hypothesis length, reference length, n-gram counts and clipped matches, as
  pycocoevalcap's BleuScorer cooks them; a resample's BLEU is the scorer's corpus formula on their sums
  (1e-15 / 1e-9 smoothing and brevity penalty exactly as `BleuScorer.compute_score`).
- CIDEr-D: each study's n-gram term frequencies, as pycocoevalcap's CiderScorer counts them; a resample's
  CIDEr-D is `CiderScorer.compute_cider` on the resampled list of studies: document frequencies counted
  over the drawn references (a study drawn twice counts twice, as it would in the scorer), idf from the
  number of drawn studies, the length penalty (sigma 6, lengths as the scorer counts them), the mean.
- ROUGE-L: the mean of per-study scores, as the scorer defines it.
- METEOR: the 23 alignment statistics the jar answers for each pair (`SCORE`); a resample's METEOR is the
  jar's scoring of their sums (`EVAL`), reimplemented below with the jar's English parameters and checked
  against the jar on the full set and on resamples.
"""

from __future__ import annotations

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider_scorer import CiderScorer

from r2g.metrics.bootstrap import StudyMean, SummedStats

BLEU_KEYS = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4")
_ELEMENTS = 8_000_000
_TINY, _SMALL = 1e-15, 1e-9  # BleuScorer.compute_score's guards against 0/0


def bleu_stats(scorer: BleuScorer) -> SummedStats:
    """From a BleuScorer that scored the corpus (one reference per study): columns testlen, reflen,
    guess_1..4, correct_1..4 per study."""
    rows = []
    for comps, (reflens, _) in zip(scorer.ctest, scorer.crefs):
        testlen = comps["testlen"]
        reflen = min((abs(length - testlen), length) for length in reflens)[1]  # option "closest", as Bleu passes
        rows.append([testlen, reflen, *comps["guess"], *comps["correct"]])
    return SummedStats(BLEU_KEYS, np.array(rows, dtype=float), _bleu_from_sums,
                       "BleuScorer's corpus formula on the resample's summed lengths and clipped n-gram counts")


def _bleu_from_sums(sums: np.ndarray) -> np.ndarray:
    testlen, reflen, guess, correct = sums[:, 0], sums[:, 1], sums[:, 2:6], sums[:, 6:10]
    out = np.empty((len(sums), 4))
    bleu = np.ones(len(sums))
    for k in range(4):
        bleu = bleu * ((correct[:, k] + _TINY) / (guess[:, k] + _SMALL))
        out[:, k] = bleu ** (1.0 / (k + 1))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    short = ratio < 1
    out[short] *= np.exp(1 - 1 / ratio[short])[:, None]
    return out


class CiderStats:
    """CIDEr-D recomputed on each resample, document frequencies included (see the module docstring).

    For study i and n-gram order n, with idf w_g = log(drawn studies) - log(max(1, df_g)) (>= 0):
        sim_n = sum_g min(tf_hyp w_g, tf_ref w_g) tf_ref w_g / (|hyp_n| |ref_n|) * exp(-(len_h - len_r)^2 / 2 sigma^2)
    with |x_n| = sqrt(sum_g (tf_x w_g)^2) (no division when either is 0); the study's score is 10 * mean_n sim_n.
    Each of the three sums is over a fixed list of (study, order, n-gram) entries, so a resample costs a
    gather of w and a segmented sum per list.
    """

    keys = ("CIDEr",)
    method = ("CiderScorer's formula on the resampled studies: document frequencies from the drawn references "
              "(counted with multiplicity), idf from the number drawn")

    def __init__(self, scorer: CiderScorer):
        # Arranged on first use: a score without intervals (training's validation) does not pay for it.
        self._scorer: CiderScorer | None = scorer

    def _arrange(self) -> None:
        scorer, self._scorer = self._scorer, None
        self.n, self.sigma = scorer.n, scorer.sigma
        vocab: dict[tuple, int] = {}
        ref_entries, hyp_entries, match_entries, doc = [], [], [], []  # (study, order, ngram, coefficient)
        penalty = []
        for i, (test, refs) in enumerate(zip(scorer.ctest, scorer.crefs)):
            (ref,) = refs  # r2g scores one reference per study
            for g, tf in ref.items():
                j = vocab.setdefault(g, len(vocab))
                ref_entries.append((i, len(g) - 1, j, tf, tf))
                doc.append((j, i))
            for g, tf in test.items():
                j = vocab.setdefault(g, len(vocab))
                hyp_entries.append((i, len(g) - 1, j, tf, tf))
                if g in ref:  # min(tf_h w, tf_r w) = min(tf_h, tf_r) w exactly, as w >= 0
                    match_entries.append((i, len(g) - 1, j, min(tf, ref[g]), ref[g]))
            # CiderScorer's "length" counts bigram occurrences (its `n == 1` is the 2-gram slot).
            delta = float(sum(tf for g, tf in test.items() if len(g) == 2) - sum(tf for g, tf in ref.items() if len(g) == 2))
            penalty.append(np.e ** (-(delta**2) / (2 * self.sigma**2)))
        self.studies, self.vocab = len(scorer.ctest), len(vocab)
        self.penalty = np.array(penalty)
        self.ref, self.hyp, self.match = (_Segments(e, self.studies, self.n) for e in (ref_entries, hyp_entries, match_entries))
        doc_arr = np.array(doc, dtype=np.int64).reshape(-1, 2)
        order = np.argsort(doc_arr[:, 0], kind="stable")  # references grouped by n-gram
        self.doc_study = doc_arr[order, 1]
        self.doc_ngram_start, self.doc_ngrams = _starts(doc_arr[order, 0])

    def values(self, weights: np.ndarray) -> np.ndarray:
        if self._scorer is not None:
            self._arrange()
        weights = np.asarray(weights, dtype=float)
        # Resamples at a time so that each (resamples, entries) temporary stays near 64 MB.
        step = max(1, _ELEMENTS // max(1, len(self.ref.ngram) + len(self.hyp.ngram)))
        return np.concatenate([self._values(weights[i:i + step]) for i in range(0, len(weights), step)])

    def _values(self, weights: np.ndarray) -> np.ndarray:
        b = len(weights)
        df = np.zeros((b, self.vocab))
        if len(self.doc_study):
            df[:, self.doc_ngrams] = np.add.reduceat(weights[:, self.doc_study], self.doc_ngram_start, axis=1)
        drawn = weights.sum(1, keepdims=True)
        idf = np.log(drawn) - np.log(np.maximum(1.0, df))
        num, norm_h, norm_r = (seg.sums(idf) for seg in (self.match, self.hyp, self.ref))  # (b, studies, n)
        norm_h, norm_r = np.sqrt(norm_h), np.sqrt(norm_r)
        both = (norm_h != 0) & (norm_r != 0)
        sim = np.divide(num, norm_h * norm_r, out=num.copy(), where=both) * self.penalty[None, :, None]
        per_study = sim.mean(2) * 10.0
        return (np.sum(weights * per_study, axis=1) / drawn[:, 0])[:, None]


class _Segments:
    """Entries (study, order, ngram, a, b): sum of (a w_g)(b w_g) per (study, order), in the scorer's order of
    terms and of float operations (its vectors hold tf * w), so the full sample gives its value bit for bit."""

    def __init__(self, entries: list, studies: int, n: int):
        arr = np.array(entries, dtype=float).reshape(-1, 5)
        slot = (arr[:, 0] * n + arr[:, 1]).astype(np.int64)
        order = np.argsort(slot, kind="stable")
        self.ngram = arr[order, 2].astype(np.int64)
        self.a, self.b = arr[order, 3], arr[order, 4]
        self.start, self.slots = _starts(slot[order])
        self.shape = (studies, n)

    def sums(self, idf: np.ndarray) -> np.ndarray:
        out = np.zeros((len(idf), self.shape[0] * self.shape[1]))
        if len(self.ngram):
            w = idf[:, self.ngram]
            out[:, self.slots] = np.add.reduceat((self.a * w) * (self.b * w), self.start, axis=1)
        return out.reshape(len(idf), *self.shape)


def _starts(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and key of each run of equal values in a sorted array."""
    if not len(sorted_keys):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    start = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return start, sorted_keys[start].astype(np.int64)


def rouge_stats(per_study: np.ndarray) -> StudyMean:
    return StudyMean(("ROUGE_L",), np.asarray(per_study, dtype=float).reshape(-1, 1))


# ---- METEOR -----------------------------------------------------------------------------------------------

# meteor-1.5.jar's parameters for `-l en` (task "default"): alpha, beta, gamma, delta, and the module weights
# of its four matching stages (exact, stem, synonym, paraphrase).
_ALPHA, _BETA, _GAMMA, _DELTA = 0.85, 0.20, 0.60, 0.75
_MODULE_WEIGHTS = np.array([1.0, 0.6, 0.8, 0.6])
METEOR_STATS = 23


def meteor_stats(lines: list[str]) -> SummedStats:
    """From the jar's per-pair statistics lines (its answers to SCORE): test length, reference length, test and
    reference function words, per stage (test content, reference content, test function, reference function)
    matches, chunks, test and reference word matches."""
    stats = np.array([[float(v) for v in line.split()] for line in lines]).reshape(len(lines), -1)
    # The jar's aggregation (MeteorStats.addStats) leaves out the one chunk of a pair matched exactly and whole.
    stats[_whole_match(stats), 20] = 0.0
    return SummedStats(("METEOR",), stats, meteor_from_sums,
                       "the jar's scoring (MeteorScorer.computeMetrics) of the resample's summed alignment statistics")


def _whole_match(stats: np.ndarray) -> np.ndarray:
    """Rows where every test and reference word is matched, in one chunk (the jar's frag = 0 case)."""
    stages = stats[:, 4:20].reshape(-1, 4, 4)
    test_total = stages[:, :, 0].sum(1) + stages[:, :, 2].sum(1)
    ref_total = stages[:, :, 1].sum(1) + stages[:, :, 3].sum(1)
    return (test_total == stats[:, 0]) & (ref_total == stats[:, 1]) & (stats[:, 20] == 1)


def meteor_from_sums(sums: np.ndarray) -> np.ndarray:
    """METEOR of summed statistics, as the jar's EVAL computes it."""
    sums = np.atleast_2d(sums)
    test_len, ref_len, test_fn, ref_fn = sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3]
    stages = sums[:, 4:20].reshape(-1, 4, 4)  # (B, stage, [test content, ref content, test fn, ref fn])
    chunks = sums[:, 20]
    test_w = _DELTA * (test_len - test_fn) + (1 - _DELTA) * test_fn
    ref_w = _DELTA * (ref_len - ref_fn) + (1 - _DELTA) * ref_fn
    test_m = (stages[:, :, 0] @ _MODULE_WEIGHTS) * _DELTA + (stages[:, :, 2] @ _MODULE_WEIGHTS) * (1 - _DELTA)
    ref_m = (stages[:, :, 1] @ _MODULE_WEIGHTS) * _DELTA + (stages[:, :, 3] @ _MODULE_WEIGHTS) * (1 - _DELTA)
    test_total = stages[:, :, 0].sum(1) + stages[:, :, 2].sum(1)
    ref_total = stages[:, :, 1].sum(1) + stages[:, :, 3].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = test_m / test_w, ref_m / ref_w
        fmean = 1.0 / ((1 - _ALPHA) / precision + _ALPHA / recall)
        frag = np.where(_whole_match(sums), 0.0, chunks / ((test_total + ref_total) / 2))
        score = fmean * (1 - _GAMMA * frag**_BETA)
    return np.where(np.isnan(score), 0.0, np.maximum(score, 0.0))[:, None]

