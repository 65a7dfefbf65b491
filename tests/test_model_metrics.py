"""The model-based metrics on tiny random models of the real architectures, saved in the real layouts: r2g's
numbers must equal the field's packages' own on the same weights and reports (RadGraph: radgraph, BERTScore:
bert-score, CheXbert: f1chexbert, RaTEScore: RaTEScore with its medspacy import stubbed), GREEN's parser and
RadCliQ's formula must give hand-computed values, and a missing folder is one error naming its flag."""

from __future__ import annotations

import json
import math
import os
import sys
import types

import numpy as np
import pytest

from r2g.errors import R2GError
from r2g.metrics.keys import MODEL_KEYS
from r2g.metrics.model_based import ModelMetrics, chexbert_scores, score_model_based
from .tiny_scorers import (REPORTS, write_tiny_chexbert, write_tiny_radgraph, write_tiny_ratescore,
                                write_tiny_roberta)

REFS = [r for r, _ in REPORTS]
PREDS = [p for _, p in REPORTS]
IDS = [str(i) for i in range(len(REPORTS))]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    return {"radgraph": str(write_tiny_radgraph(root / "rg")),
            "bertscore": str(write_tiny_roberta(root / "distilroberta-base")),
            "ratescore": str(write_tiny_ratescore(root / "rate")),
            "chexbert": str(write_tiny_chexbert(root / "chexbert", seed=3))}


@pytest.fixture(scope="module")
def scored(folders):
    return score_model_based(dict(zip(IDS, REFS)), dict(zip(IDS, PREDS)), ModelMetrics(**folders))


def test_every_key_with_its_weights_and_per_study_values(scored, folders):
    assert set(MODEL_KEYS) - {"green"} <= set(scored)
    for key in set(MODEL_KEYS) - {"green"}:
        assert key in scored["metric_weights"], key
    assert scored["metric_weights"]["bertscore_f1"]["folder"] == "distilroberta-base"
    assert len(scored["metric_weights"]["bertscore_f1"]["sha256"]) == 64
    assert scored["metric_weights"]["radgraph_simple"]["folder"] == "radgraph"
    assert scored["metric_weights"]["ratescore"]["ner"]["folder"] == "ner"
    # Each mean-of-reports key is the mean of its per-study values.
    for key in ("radgraph_simple", "radgraph_partial", "radgraph_complete", "radgraph_combined", "bertscore_f1",
                "sembscore", "ratescore", "radcliq_v1"):
        per_study = scored["per_study"][key]
        assert list(per_study) == IDS
        assert scored[key] == pytest.approx(np.mean(list(per_study.values())))
    labels = scored["per_study"]["chexbert_labels"]
    assert chexbert_scores([labels[k]["reference"] for k in IDS], [labels[k]["prediction"] for k in IDS]) == {
        k: scored[k] for k in ("chexbert_micro_f1", "chexbert_macro_f1", "chexbert5_micro_f1", "chexbert5_macro_f1",
                               "chexbert5_accuracy")}


def test_chexbert_per_study_stats_resample(scored):
    """The CheXbert keys from summed per-study statistics: all studies once gives the reported numbers; a
    resample (study 1 twice, study 0 never) gives the numbers of the materialised resample."""
    from r2g.metrics.model_based import chexbert_finish, chexbert_study_stats

    labels = scored["per_study"]["chexbert_labels"]
    refs, preds = [labels[k]["reference"] for k in IDS], [labels[k]["prediction"] for k in IDS]
    stats = chexbert_study_stats(refs, preds)
    assert chexbert_finish(np.ones((1, len(IDS))) @ stats)[0] == pytest.approx(
        [scored[k] for k in ("chexbert_micro_f1", "chexbert_macro_f1", "chexbert5_micro_f1", "chexbert5_macro_f1",
                             "chexbert5_accuracy")])
    draw = [1, 1, 2, 3, 4]
    weights = np.bincount(draw, minlength=len(IDS))[None].astype(float)
    expected = chexbert_scores([refs[i] for i in draw], [preds[i] for i in draw])
    assert chexbert_finish(weights @ stats)[0] == pytest.approx(list(expected.values()))


def test_radgraph_equals_the_package(scored, folders):
    from pathlib import Path

    from radgraph import F1RadGraph

    folder = Path(folders["radgraph"])
    package = F1RadGraph(reward_level="all", model_type="radgraph", model_cache_dir=str(folder.parent), cuda=-1)
    means, lists, _, _ = package(refs=REFS, hyps=PREDS)
    for variant, mean, values in zip(("simple", "partial", "complete"), means, lists):
        assert scored[f"radgraph_{variant}"] == mean
        assert list(scored["per_study"][f"radgraph_{variant}"].values()) == values
    # The tiny model finds entities and relations: the three variants differ, and not all are 0.
    assert len({scored["radgraph_simple"], scored["radgraph_complete"]}) == 2 and scored["radgraph_simple"] > 0


def test_bertscore_equals_the_package_with_rexrank_settings(scored, folders):
    from bert_score import BERTScorer

    from r2g.metrics.bertscore import baseline_file

    package = BERTScorer(model_type=folders["bertscore"], num_layers=5, lang="en", idf=False,
                         rescale_with_baseline=True, baseline_path=str(baseline_file()))
    _, _, f1 = package.score(PREDS, REFS)
    assert list(scored["per_study"]["bertscore_f1"].values()) == pytest.approx(f1.tolist(), abs=1e-6)
    raw = BERTScorer(model_type=folders["bertscore"], num_layers=5, lang="en").score(PREDS, REFS)[2]
    assert not np.allclose(f1.numpy(), raw.numpy())  # rescaled, not raw
    assert baseline_file().name == "distilroberta-base.tsv"


def test_chexbert_equals_f1chexbert(scored, folders, monkeypatch):
    """f1chexbert loads 'bert-base-uncased' by name and chexbert.pth from its cache dir: both pointed here."""
    import f1chexbert.f1chexbert as package

    from r2g.metrics.local_weights import tokenizer_v4_methods

    tokenizer_v4_methods()  # f1chexbert tokenizes with encode_plus (transformers 4)
    monkeypatch.chdir(folders["chexbert"])  # from_pretrained("bert-base-uncased") finds ./bert-base-uncased
    monkeypatch.setattr(package, "CACHE_DIR", folders["chexbert"])
    # f1chexbert 0.0.2 unpacks 3 values from sklearn's private _check_targets, which returns 4 since sklearn 1.6.
    check_targets = package._check_targets
    monkeypatch.setattr(package, "_check_targets", lambda *args: check_targets(*args)[:3])
    monkeypatch.setattr(package, "count_nonzero", lambda x, axis: np.count_nonzero(np.asarray(x.todense() if hasattr(
        x, "todense") else x), axis=axis))  # per-example accuracy only, which r2g does not report
    accuracy, _, report14, report5 = package.F1CheXbert(device="cpu")(hyps=PREDS, refs=REFS)
    assert scored["chexbert_micro_f1"] == pytest.approx(report14["micro avg"]["f1-score"])
    assert scored["chexbert_macro_f1"] == pytest.approx(report14["macro avg"]["f1-score"])
    assert scored["chexbert5_micro_f1"] == pytest.approx(report5["micro avg"]["f1-score"])
    assert scored["chexbert5_macro_f1"] == pytest.approx(report5["macro avg"]["f1-score"])
    assert scored["chexbert5_accuracy"] == pytest.approx(accuracy)
    assert 0 < scored["chexbert_macro_f1"] < 1  # the tiny heads label reports differently


def test_ratescore_equals_the_package(scored, folders, monkeypatch):
    """RaTEScore imports medspacy (not installable under r2g's pins) for sentence splitting only: stubbed here
    with r2g's splitter, everything after it is the package's."""
    from r2g.metrics.ratescore import split_sentences

    class Doc:
        def __init__(self, text):
            self.sents = split_sentences(text)

    medspacy = types.ModuleType("medspacy")
    medspacy.load = lambda **kwargs: Doc
    monkeypatch.setitem(sys.modules, "medspacy", medspacy)
    for name in [m for m in sys.modules if m.startswith("RaTEScore")]:
        monkeypatch.delitem(sys.modules, name)
    from RaTEScore import RaTEScore

    package = RaTEScore(bert_model=f"{folders['ratescore']}/ner", eval_model=f"{folders['ratescore']}/encoder",
                        use_gpu=False, batch_size=16)
    expected = package.compute_score(PREDS, REFS)
    from RaTEScore.scorer import DEFAULT_MATRIX_LONG

    from r2g.metrics.ratescore import AFFINITY, NEGATION_WEIGHT

    assert {f"{a.lower()}_{b.lower()}": v for (a, b), v in AFFINITY.items()} == {
        k: v for k, v in DEFAULT_MATRIX_LONG.items() if k != "neg_weight"}
    assert NEGATION_WEIGHT == DEFAULT_MATRIX_LONG["neg_weight"]
    assert list(scored["per_study"]["ratescore"].values()) == pytest.approx(expected, abs=1e-6)
    assert any(v != 0.5 for v in expected)  # some pairs have entities on both sides


def test_radcliq_is_the_published_combination(scored):
    from r2g.metrics.radcliq import COEFFICIENTS, INTERCEPT, MEAN, SCALE, bleu2

    assert bleu2("a b c d", "a b c d") == pytest.approx(1.0)
    # 3 of 4 unigrams and 1 of 3 bigrams match; candidate as long as the reference: sqrt(3/4 * 1/3) = 0.5.
    assert bleu2("a b c d", "a b x d") == pytest.approx(0.5)
    assert bleu2("a b", "x y") == 0.0
    assert bleu2("a b c d", "a b") == pytest.approx(math.exp(1 - 2))  # brevity penalty, precisions 1
    # A report pair with every input at the published mean scores the intercept; one scale up on BERTScore
    # moves it by its coefficient.
    from r2g.metrics.radcliq import radcliq_v1

    assert radcliq_v1([MEAN[0]], [MEAN[1]], [MEAN[2]], [MEAN[3]]) == pytest.approx([INTERCEPT])
    assert radcliq_v1([MEAN[0]], [MEAN[1] + SCALE[1]], [MEAN[2]], [MEAN[3]]) == pytest.approx([COEFFICIENTS[1]])
    # Each report's RadCliQ-v1 from its own four inputs as scored (identical reports: BLEU-2 1, SembScore 1).
    per_study = scored["per_study"]
    inputs = [[per_study[key][k] for k in IDS] for key in ("radgraph_combined", "bertscore_f1", "sembscore")]
    bleu = [bleu2(r, p) for r, p in zip(REFS, PREDS)]
    assert list(per_study["radcliq_v1"].values()) == pytest.approx(radcliq_v1(*inputs, bleu))
    assert per_study["sembscore"]["0"] == pytest.approx(1.0) and bleu[0] == pytest.approx(1.0)
    assert per_study["radcliq_v1"]["0"] < per_study["radcliq_v1"]["4"]  # the identical pair scores best (lowest)


def test_entity_relation_f1_by_hand():
    from r2g.metrics.radgraph import entity_relation_f1

    def annotation(*entities):
        return {"entities": {str(i): {"tokens": t, "label": lab, "relations": rel}
                             for i, (t, lab, rel) in enumerate(entities, start=1)}}

    ref = annotation(("effusion", "OBS-DP", [["located_at", "2"]]), ("pleural", "ANAT-DP", []))
    pred = annotation(("effusion", "OBS-DP", []), ("pleural", "ANAT-DP", []), ("edema", "OBS-DP", []))
    # entities: 2 of 2 reference, 2 of 3 predicted -> F1 0.8; relations: none predicted -> 0.
    assert entity_relation_f1(pred, ref) == pytest.approx(0.4)
    assert entity_relation_f1(ref, ref) == 1.0 and entity_relation_f1(None, ref) == 0.0


@pytest.mark.parametrize("flag, make", [
    ("--radgraph", lambda tmp: tmp / "radgraph"),
    ("--bertscore", lambda tmp: tmp / "missing"),
    ("--ratescore", lambda tmp: tmp),
    ("--chexbert", lambda tmp: tmp),
    ("--green", lambda tmp: tmp),
])
def test_missing_or_incomplete_folder_is_one_error_naming_the_flag(tmp_path, flag, make):
    field = flag[2:]
    with pytest.raises(R2GError, match=rf"^{flag} .*(no such folder|not found|no weights)"):
        score_model_based({"1": "a ."}, {"1": "a ."}, ModelMetrics(**{field: str(make(tmp_path))}))


def test_bertscore_refuses_another_model(tmp_path):
    folder = tmp_path / "bert"
    from .tiny_scorers import write_tiny_bert

    write_tiny_bert(folder)
    with pytest.raises(R2GError, match="--bertscore .*bert model with 2 layers, not distilroberta-base"):
        score_model_based({"1": "a ."}, {"1": "a ."}, ModelMetrics(bertscore=str(folder)))


def test_radgraph_folder_named_after_its_type(folders, tmp_path):
    import shutil

    renamed = tmp_path / "my-radgraph"
    shutil.copytree(folders["radgraph"], renamed)
    with pytest.raises(R2GError, match="--radgraph .*name the folder after its model type"):
        score_model_based({"1": "a ."}, {"1": "a ."}, ModelMetrics(radgraph=str(renamed)))


def test_offline_switches_on_and_back(monkeypatch):
    from huggingface_hub import constants

    from r2g.metrics.local_weights import offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with offline():
        assert constants.is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1"
    assert not constants.is_offline_mode() and "HF_HUB_OFFLINE" not in os.environ


def test_radgraph_bert_named_by_hub_id_is_not_downloaded(folders, tmp_path):
    import shutil

    folder = tmp_path / "radgraph"
    shutil.copytree(folders["radgraph"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["embedder"]["token_embedders"]["bert"]["model_name"] = "no-such-org/no-such-bert"
    config["dataset_reader"]["token_indexers"]["bert"]["model_name"] = "no-such-org/no-such-bert"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(R2GError, match="--radgraph .*could not be loaded offline.*model_name"):
        score_model_based({"1": "a ."}, {"1": "a ."}, ModelMetrics(radgraph=str(folder)))


def test_score_cli_writes_keys_and_weights(folders, tmp_path):
    from typer.testing import CliRunner

    from r2g.cli import app

    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": i, "prediction": p, "reference": r}) + "\n"
                            for i, (r, p) in enumerate(REPORTS)))
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(app, ["score", "--pred", str(pred), "--no-meteor", "--out", str(out),
                                      "--bertscore", folders["bertscore"]])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert "bertscore_f1" in result.output and "BLEU_4" in metrics and "ce_micro_f1" in metrics
    assert metrics["metric_weights"]["bertscore_f1"]["folder"] == "distilroberta-base"
    assert list(metrics["per_study"]["bertscore_f1"]) == [str(i) for i in range(len(REPORTS))]
    low, high = metrics["intervals"]["bertscore_f1"]  # the model-based keys get their interval too
    assert low <= high and metrics["bootstrap"]["resamples"] == 1000


RESPONSE = """
    The candidate misses the effusion.

    [Clinically Significant Errors]:
    (a) False report of a finding in the candidate: 1. Edema.
    (b) Missing a finding present in the reference: 2. Effusion; atelectasis.
    (c) Misidentification of a finding's anatomic location/position: 0.
    (d) Misassessment of the severity of a finding: 0.
    (e) Mentioning a comparison that isn't in the reference: 0.
    (f) Omitting a comparison detailing a change from a prior study: 0.

    [Clinically Insignificant Errors]:
    (a) False report of a finding in the candidate: 4. Many.

    [Matched Findings]:
    3. Cardiomegaly; pneumothorax; lines.
"""


def test_green_parser_by_hand():
    from r2g.metrics.green import clean_response, green_score, make_prompt, parse_counts

    assert parse_counts(RESPONSE) == ([1, 2, 0, 0, 0, 0], 3)
    assert green_score(RESPONSE) == pytest.approx(3 / (3 + 3))  # insignificant errors do not count
    assert green_score(RESPONSE.replace("3. Cardiomegaly", "0. Cardiomegaly")) == 0.0  # nothing matched
    assert green_score("[Clinically Significant Errors]:\nNo errors.\n\n[Matched Findings]:\n2. a; b") == 1.0
    assert green_score("gibberish") == 0.0
    numbered = RESPONSE.replace("(a) False", "(1) False").replace("(b) Missing", "(2) Missing")
    numbered = numbered.replace("(c)", "(3)").replace("(d)", "(4)").replace("(e)", "(5)").replace("(f)", "(6)")
    assert parse_counts(numbered)[0] == [1, 2, 0, 0, 0, 0]
    decoded = "<|user|>\n" + make_prompt("ref .", "cand .") + "<|assistant|>\n[Explanation]:\nok\n" + RESPONSE
    assert clean_response(decoded).startswith("\nok\n") and parse_counts(clean_response(decoded))[1] == 3
    prompt = make_prompt("heart " * 2000, "lungs clear .")
    assert prompt.count("heart") == 1024 and "3. Candidate Report:\n    lungs clear ." in prompt


def test_green_runs_a_local_judge(tmp_path):
    """A tiny random Llama judge: its answers are noise (GREEN 0 unless it writes the format), but they go
    through the real path: the chat template, greedy decoding offline, cleaning, one score per report."""
    from r2g.demo.toys import write_tiny_llm
    from r2g.metrics.green import GreenScorer, green_score, make_prompt

    judge = write_tiny_llm(tmp_path / "judge", [make_prompt(r, p) for r, p in REPORTS[:2]] * 3)
    scorer = GreenScorer(judge)
    encoded = scorer.tokenizer(["a b", "a"], padding=True)["input_ids"]
    assert encoded[0][-1] == encoded[1][-1] == scorer.tokenizer.eos_token_id  # EOS appended, padding on the left
    responses = scorer.responses(REFS[:2], PREDS[:2])
    assert len(responses) == 2 and all("Objective" not in r and "<|user|>" not in r for r in responses)
    scored = score_model_based({"a": REFS[0], "b": REFS[1]}, {"a": PREDS[0], "b": PREDS[1]},
                               ModelMetrics(green=str(judge)))
    assert scored["per_study"]["green"] == {"a": green_score(responses[0]), "b": green_score(responses[1])}
    assert scored["metric_weights"]["green"]["folder"] == "judge"


def test_every_model_key_has_bootstrap_statistics_that_give_its_value(scored):
    """The bootstrap contract: every key's statistics, all studies drawn once, give the reported number."""
    from r2g.metrics.bootstrap import intervals
    from r2g.metrics.model_based import model_study_stats

    stats = model_study_stats(scored, IDS)
    covered = {key for s in stats for key in s.keys}
    assert covered == set(MODEL_KEYS) - {"green"}
    for s in stats:
        assert s.values(np.ones((1, len(IDS))))[0] == pytest.approx([scored[k] for k in s.keys]), s.keys
    found = intervals(stats, len(IDS), samples=200, seed=0)
    assert set(found) == covered and all(low <= high for low, high in found.values())
    assert found == intervals(stats, len(IDS), samples=200, seed=0)  # seeded
