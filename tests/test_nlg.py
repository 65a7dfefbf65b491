"""BLEU / ROUGE-L / CIDEr on hand-computed cases, and the robust METEOR on real IU-Xray reports."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from r2g.errors import R2GError
from r2g.metrics import nlg
from r2g.metrics.nlg import Meteor, close_shared_meteor, compute_nlg, shared_meteor

DATA = Path(os.environ.get("R2G_IU_REPORTS", "/work/shared/data/iu_xray_reports_train_val.json"))
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")


def test_identical_reports_score_one():
    texts = {"a": "the heart is normal in size .", "b": "no pneumothorax or pleural effusion ."}
    scores = compute_nlg(texts, dict(texts), meteor=False)
    assert set(scores) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr"}
    for key in ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6)
    # CIDEr-D of a perfect match is 10 once every n-gram has a non-zero idf (here: no n-gram in both reports).
    assert scores["CIDEr"] == pytest.approx(10.0, abs=1e-6)


def test_bleu1_with_brevity_penalty():
    # 4 hypothesis words, all in the 7-word reference: precision 1, brevity penalty exp(1 - 7/4).
    scores = compute_nlg({"a": "the heart is normal in size ."}, {"a": "the heart is normal"}, meteor=False)
    assert scores["BLEU_1"] == pytest.approx(math.exp(1 - 7 / 4), abs=1e-6)


def test_bleu1_clips_repeated_words():
    # "the" counts once (the reference has it once): precision 1/3; longer than the reference, so no penalty.
    scores = compute_nlg({"a": "the heart"}, {"a": "the the the"}, meteor=False)
    assert scores["BLEU_1"] == pytest.approx(1 / 3, abs=1e-6)


def test_rouge_l_by_hand():
    # LCS("no acute disease", "no disease") = 2: P = 2/2, R = 2/3, ROUGE-L (beta 1.2) = (1 + b²)PR / (R + b²P).
    scores = compute_nlg({"a": "no acute disease"}, {"a": "no disease"}, meteor=False)
    p, r, b2 = 1.0, 2 / 3, 1.2**2
    assert scores["ROUGE_L"] == pytest.approx((1 + b2) * p * r / (r + b2 * p), abs=1e-6)


def test_empty_predictions_score_zero():
    refs = {"a": "the heart is normal .", "b": "no effusion ."}
    scores = compute_nlg(refs, {"a": "", "b": ""}, meteor=False)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in scores.values())


def test_ids_must_match():
    with pytest.raises(R2GError, match=r"1 id\(s\) without a prediction \(first: \['b'\]\).*1 id\(s\) without a "
                                       r"reference \(first: \['c'\]\)"):
        compute_nlg({"a": "x", "b": "y"}, {"a": "x", "c": "y"}, meteor=False)


def test_texts_must_be_strings():
    with pytest.raises(R2GError, match="prediction for id 'a' is list"):
        compute_nlg({"a": "x"}, {"a": ["x"]}, meteor=False)


def test_no_reports():
    with pytest.raises(R2GError, match="no reports"):
        compute_nlg({}, {}, meteor=False)


def test_no_java_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(nlg.shutil, "which", lambda name: None)
    with pytest.raises(R2GError, match="openjdk-17-jre-headless.*meteor=False / --no-meteor"):
        Meteor()


# ---- METEOR -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_pairs() -> tuple[dict, dict]:
    """Each real report (lowercased) against the next one: 500 pairs of real radiology language."""
    if not DATA.exists():
        pytest.skip(f"{DATA} not available")
    reports = [row["report"].lower() for split in json.loads(DATA.read_text()).values() for row in split]
    ids = [str(i) for i in range(500)]
    return {k: reports[i] for i, k in enumerate(ids)}, {k: reports[i + 1] for i, k in enumerate(ids)}


@pytest.fixture(scope="module")
def meteors():
    """pycocoevalcap's wrapper and ours, started together so the two JVMs load in parallel."""
    from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor

    coco = CocoMeteor()
    ours = shared_meteor()
    yield coco, ours
    coco.meteor_p.kill()
    coco.meteor_p.wait()
    close_shared_meteor()  # free the JVM's memory for the tests that run after this module


@needs_java
def test_meteor_equals_pycocoevalcap(meteors):
    coco, ours = meteors
    refs = {"1": "the heart is normal in size .", "2": "no pneumothorax or pleural effusion .",
            "3": "mild cardiomegaly .  . no acute disease .", "4": "lungs are clear", "5": "the heart is enlarged"}
    preds = {"1": "heart size is normal .", "2": "no pleural effusion or pneumothorax .",
             "3": "heart size is upper limits of normal .", "4": "clear lungs", "5": ""}
    coco_score, coco_each = coco.compute_score({k: [v] for k, v in refs.items()}, {k: [v] for k, v in preds.items()})
    our_score, our_each = ours.score(refs, preds)
    assert our_score == pytest.approx(coco_score, abs=1e-6)
    assert our_each == pytest.approx(coco_each, abs=1e-6)
    assert our_each[4] == 0.0  # the empty prediction


@needs_java
def test_meteor_on_hundreds_of_real_pairs(meteors, real_pairs):
    _, ours = meteors
    refs, preds = real_pairs
    corpus, each = ours.score(refs, preds)
    assert 0.0 < corpus < 1.0
    assert len(each) == len(refs) and all(0.0 <= s <= 1.0 for s in each)


@needs_java
def test_compute_nlg_with_meteor(meteors, real_pairs):
    refs, preds = real_pairs
    scores = compute_nlg(refs, preds)
    assert list(scores) == ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"]
    assert 0.0 < scores["METEOR"] < 1.0


@needs_java
def test_meteor_of_resamples_from_the_jars_statistics_equals_the_jar(meteors, real_pairs):
    """METEOR's interval resamples the jar's per-pair statistics: their full-sample score is the jar's corpus
    METEOR, and a resample's is what the jar says for the materialised resample (whole matches included: the
    jar leaves their chunk out of its sums)."""
    import numpy as np

    from r2g.metrics.bootstrap import resample_weights, resampled_values
    from r2g.metrics.nlg_stats import meteor_stats

    _, ours = meteors
    refs, preds = real_pairs
    refs, preds = dict(list(refs.items())[:150]), dict(list(preds.items())[:150])
    preds.update({k: refs[k] for k in list(refs)[:5]})  # five exact copies
    corpus, _, lines = ours.score_with_stats(refs, preds)
    stats = [meteor_stats(lines)]
    assert resampled_values(stats, np.ones((1, 150)))["METEOR"][0] == pytest.approx(corpus, rel=1e-12)
    weights = resample_weights(150, 3, seed=0)
    values = resampled_values(stats, weights)["METEOR"]
    for row, w in enumerate(weights):
        drawn = [k for k, n in zip(refs, w) for _ in range(int(n))]
        jar, _ = ours.score({str(j): refs[k] for j, k in enumerate(drawn)}, {str(j): preds[k] for j, k in enumerate(drawn)})
        assert values[row] == pytest.approx(jar, rel=1e-12)


@needs_java
def test_meteor_sanitizes_protocol_characters(meteors):
    # A newline or "|||" in a text would split the protocol line and desynchronise the JVM.
    _, ours = meteors
    dirty, _ = ours.score({"a": "no acute\ndisease ||| today"}, {"a": "no ||| acute disease\r\n"})
    clean, _ = ours.score({"a": "no acute disease today"}, {"a": "no acute disease"})
    assert dirty == pytest.approx(clean, abs=1e-9)


@needs_java
def test_meteor_timeout_kills_the_jvm():
    meteor = Meteor(startup_timeout=0.01)
    with pytest.raises(R2GError, match="no answer within 0.01 s and was stopped"):
        meteor.score({"a": "x"}, {"a": "x"})
    assert not meteor.alive()


def test_meteor_exit_is_an_error_not_a_hang(monkeypatch):
    # A "java" that exits at once stands for a JVM that dies mid-protocol.
    true = shutil.which("true")
    monkeypatch.setattr(nlg.shutil, "which", lambda name: true)
    meteor = Meteor(startup_timeout=30)
    with pytest.raises(R2GError, match="exited unexpectedly"):
        meteor.score({"a": "x"}, {"a": "x"})
    with pytest.raises(R2GError, match="exited unexpectedly"):  # and again, not waiting for a reply
        meteor.score({"a": "x"}, {"a": "x"})
