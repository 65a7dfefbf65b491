"""Bootstrap intervals and the paired comparison: hand-computed cases over every resample of 4 studies, every
metric's resampled value against its scorer on the materialised resample, the full sample against today's
scorers on real IU-Xray text, and `r2g compare` against an independent bootstrap."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from r2g.errors import R2GError
from r2g.metrics.bootstrap import (StudyMean, all_resamples, holm, intervals, paired, percentile_interval,
                                   resample_weights, resampled_values)
from r2g.metrics.clinical import ce_study_stats, compute_ce
from r2g.metrics.nlg import compute_nlg, compute_nlg_with_stats
from r2g.metrics.score import score, score_studies

DATA = Path(os.environ.get("R2G_IU_REPORTS", "/work/shared/data/iu_xray_reports_train_val.json"))


@pytest.fixture(scope="module")
def iu_reports() -> list[str]:
    if not DATA.exists():
        pytest.skip(f"{DATA} not available")
    from r2g.data.reports import clean_report

    return [clean_report(e["report"], "iu_xray") for split in json.loads(DATA.read_text()).values() for e in split]


def pairs(texts: list[str], n: int, seed: int = 0) -> tuple[dict, dict]:
    """n real reports, each against another real report (some against itself, one empty, one a single word)."""
    refs = texts[:n]
    preds = refs[:]
    random.Random(seed).shuffle(preds)
    preds[0], preds[1], preds[2] = "", "the", refs[2]
    return {str(i): t for i, t in enumerate(refs)}, {str(i): t for i, t in enumerate(preds)}


def materialise(refs: dict, preds: dict, weights_row: np.ndarray) -> tuple[dict, dict]:
    """The resample as a test set of its own: each drawn study under a fresh id, as often as it is drawn."""
    drawn = [k for k, w in zip(refs, weights_row) for _ in range(int(w))]
    return ({f"{j}": refs[k] for j, k in enumerate(drawn)}, {f"{j}": preds[k] for j, k in enumerate(drawn)})


def test_hand_computed_interval_over_all_256_resamples_of_4_studies():
    # Per-study scores 0, 0, 0, 1: a resample's mean is k/4 with k ~ Binomial(4, 1/4) drawn ones, so of the 256
    # equally likely resamples 81 give 0, 108 give 1/4, 54 give 1/2, 12 give 3/4, 1 gives 1.
    weights = all_resamples(4)
    assert weights.shape == (256, 4) and (weights.sum(1) == 4).all()
    values = resampled_values([StudyMean(("x",), np.array([[0.0], [0.0], [0.0], [1.0]]))], weights)["x"]
    counts = {v: int(np.sum(values == v)) for v in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert counts == {0.0: 81, 0.25: 108, 0.5: 54, 0.75: 12, 1.0: 1}
    # sorted positions 0.025 * 255 = 6.4 and 0.975 * 255 = 248.6 fall among the 81 zeros and the 12 three-quarters
    assert percentile_interval(values) == (0.0, 0.75)


def test_micro_f1_from_summed_counts_over_all_256_resamples():
    # 4 studies, one label each way: (tp, fp, fn) = (1,0,0), (0,1,0), (0,0,1), (1,0,0) on Cardiomegaly.
    def lab(card):
        from r2g.labels import CHEXPERT_LABELS

        return {name: (1 if card and name == "Cardiomegaly" else None) for name in CHEXPERT_LABELS}

    ref = [lab(1), lab(0), lab(1), lab(1)]
    pred = [lab(1), lab(1), lab(0), lab(1)]
    stats = ce_study_stats(ref, pred)
    weights = all_resamples(4)
    values = resampled_values(stats, weights)
    for row, w in enumerate(weights):
        tp, fp, fn = w[0] + w[3], w[1], w[2]
        expected = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        assert values["ce_micro_f1"][row] == pytest.approx(expected, abs=1e-15)
        drawn = [i for i in range(4) for _ in range(int(w[i]))]
        ce = compute_ce([ref[i] for i in drawn], [pred[i] for i in drawn])
        assert {k: values[k][row] for k in values} == pytest.approx({k: ce[k] for k in values}, abs=1e-12)


def test_bleu_cider_rouge_of_every_resample_equal_the_scorers_on_it(iu_reports):
    """All 256 resamples of 4 real report pairs: BLEU (clipped counts, brevity penalty), CIDEr-D (document
    frequencies of the drawn references) and ROUGE-L from cached statistics equal pycocoevalcap run on the
    materialised resample."""
    refs, preds = pairs(iu_reports[100:], 4)
    _, stats = compute_nlg_with_stats(refs, preds, meteor=False)
    weights = all_resamples(4)
    values = resampled_values(stats, weights)
    for row, w in enumerate(weights):
        r, p = materialise(refs, preds, w)
        gts, res = {k: [v] for k, v in r.items()}, {k: [v] for k, v in p.items()}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        assert [values[f"BLEU_{n}"][row] for n in (1, 2, 3, 4)] == pytest.approx(bleu, rel=1e-12, abs=1e-15)
        assert values["CIDEr"][row] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12, abs=1e-15)
        assert values["ROUGE_L"][row] == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-12, abs=1e-15)


def test_full_sample_equals_todays_scorers_on_real_iu_xray(iu_reports):
    """The resampling statistics of the whole test set give exactly the numbers r2g reports (and reported
    before intervals existed): 400 real IU-Xray pairs, every NLG and CE key."""
    refs, preds = pairs(iu_reports, 400)
    scored = score_studies(refs, preds, meteor=False)
    full = {k: v[0] for k, v in resampled_values(scored.stats, np.ones((1, 400))).items()}
    reported = score(refs, preds, meteor=False)  # no bootstrap: today's path
    nlg = compute_nlg(refs, preds, meteor=False)
    assert {k: scored.metrics[k] for k in nlg} == nlg
    numeric = {k: v for k, v in reported.items() if isinstance(v, float)}
    assert set(full) == set(numeric)  # every reported key has statistics
    for key, value in numeric.items():
        assert full[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    for key in ("BLEU_1", "BLEU_4", "ROUGE_L", "ce_micro_f1", "ce_macro_f1", "ce_example_f1"):
        assert full[key] == numeric[key]  # the same float operations: bit for bit
    # CIDEr-D sums its n-gram terms one by one, numpy's segmented sums pairwise: the last bit may differ


def test_score_adds_intervals_without_moving_a_point_estimate(iu_reports):
    refs, preds = pairs(iu_reports, 120)
    plain = score(refs, preds, meteor=False)
    boot = score(refs, preds, meteor=False, bootstrap=200, seed=3)
    assert {k: boot[k] for k in plain} == plain
    assert set(boot["intervals"]) == {k for k, v in plain.items() if isinstance(v, float)}
    for key, (low, high) in boot["intervals"].items():
        assert low <= high and low <= plain[key] + 1e-12 and high >= plain[key] - 1e-12, key
    assert boot["intervals"]["BLEU_4"][0] < boot["intervals"]["BLEU_4"][1]
    assert boot["bootstrap"]["resamples"] == 200 and boot["bootstrap"]["seed"] == 3
    assert "document frequencies" in boot["bootstrap"]["recomputed"]["CIDEr"]
    assert score(refs, preds, meteor=False, bootstrap=200, seed=3)["intervals"] == boot["intervals"]  # seeded
    assert score(refs, preds, meteor=False, bootstrap=200, seed=4)["intervals"] != boot["intervals"]
    with pytest.raises(R2GError, match="--bootstrap -1"):
        score(refs, preds, meteor=False, bootstrap=-1)


def test_resample_weights_draw_n_studies_with_replacement():
    w = resample_weights(7, 500, seed=1)
    assert w.shape == (500, 7) and (w.sum(1) == 7).all() and (w >= 0).all()
    assert w.mean() == pytest.approx(1.0) and (w == resample_weights(7, 500, seed=1)).all()
    assert intervals([], 7, samples=0) == {}


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4 x 0.01, 3 x 0.03, max(2 x 0.04, 0.09), max(0.5, 0.09)
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1


def test_paired_identical_systems_give_exactly_zero_and_p_one(iu_reports):
    for seed in range(3):  # property: any texts, any seed
        refs, preds = pairs(iu_reports[seed * 50:], 40, seed)
        a = score_studies(refs, preds, meteor=False)
        b = score_studies(refs, dict(preds), meteor=False)
        for d in paired(a.stats, b.stats, 40, samples=100, seed=seed):
            assert (d.delta, d.low, d.high, d.p) == (0.0, 0.0, 0.0, 1.0), d.key


def test_paired_over_all_resamples_by_hand():
    # A scores 0, 0, 1, 1; B scores 1, 1, 1, 1: B − A = (drawn zeros of A) / 4; the observed difference 1/2.
    a = [StudyMean(("x",), np.array([[0.0], [0.0], [1.0], [1.0]]))]
    b = [StudyMean(("x",), np.ones((4, 1)))]
    (d,) = paired(a, b, 4, weights=all_resamples(4))
    assert d.delta == 0.5
    # k of 4 draws from A's zeros, k ~ Binomial(4, 1/2): 16, 64, 96, 64, 16 of 256 give 0, 1/4, 1/2, 3/4, 1.
    assert (d.low, d.high) == (0.0, 1.0)
    # |d* − 1/2| >= 1/2 only at d* = 0 or 1: 32 of 256; p = (1 + 32) / 257
    assert d.p == pytest.approx(33 / 257)
