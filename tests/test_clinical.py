"""Clinical-efficacy metrics on hand-computed cases, and the scoring entry points (files -> all metrics)."""

import json
import subprocess
import sys

import pytest

from r2g.errors import R2GError
from r2g.labels import CHEXPERT_5, CHEXPERT_LABELS
from r2g.metrics.clinical import compute_ce
from r2g.metrics.keys import CE_KEYS, HEADLINE
from r2g.metrics.score import load_pairs, score


def row(**values) -> dict:
    """A 14-label dict, blank except `values` (underscores for spaces: No_Finding=1)."""
    labels = dict.fromkeys(CHEXPERT_LABELS)
    labels.update({k.replace("_", " "): v for k, v in values.items()})
    return labels


# 3 reports. Positives (1) only count; -1, 0 and None are all negative.
REF = [row(Cardiomegaly=1, Edema=1, Atelectasis=0), row(No_Finding=1), row(Pneumothorax=1, Fracture=-1)]
PRED = [row(Cardiomegaly=1, Edema=-1, Atelectasis=None), row(No_Finding=1, Fracture=1), row(Pneumothorax=None)]
# Per label (tp, fp, fn): Cardiomegaly (1,0,0), No Finding (1,0,0), Edema (0,0,1), Pneumothorax (0,0,1),
# Fracture (0,1,0); every other label (0,0,0) -> P = R = F1 = 0 (zero_division=0).


def test_micro_by_hand():
    ce = compute_ce(REF, PRED)
    # tp 2, fp 1, fn 2.
    assert ce["ce_micro_precision"] == pytest.approx(2 / 3)
    assert ce["ce_micro_recall"] == pytest.approx(2 / 4)
    assert ce["ce_micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))


def test_macro_by_hand():
    ce = compute_ce(REF, PRED)
    # Only Cardiomegaly and No Finding score (1, 1, 1); the mean runs over all 14 columns.
    assert ce["ce_macro_precision"] == pytest.approx(2 / 14)
    assert ce["ce_macro_recall"] == pytest.approx(2 / 14)
    assert ce["ce_macro_f1"] == pytest.approx(2 / 14)


def test_five_label_subset_by_hand():
    ce = compute_ce(REF, PRED)
    # Of CHEXPERT_5 only Cardiomegaly (tp) and Edema (fn) occur: micro P 1/1, R 1/2; macro 1/5 each.
    assert ce["ce5_micro_precision"] == pytest.approx(1.0)
    assert ce["ce5_micro_recall"] == pytest.approx(0.5)
    assert ce["ce5_micro_f1"] == pytest.approx(2 / 3)
    assert ce["ce5_macro_f1"] == pytest.approx(1 / 5)


def test_example_based_by_hand():
    ce = compute_ce(REF, PRED)
    # Report 1: tp1 fn1 -> P 1, R 1/2, F1 2/3. Report 2: tp1 fp1 -> P 1/2, R 1, F1 2/3. Report 3: fn1 -> 0, 0, 0.
    assert ce["ce_example_precision"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert ce["ce_example_recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert ce["ce_example_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_example_based_empty_report_scores_zero():
    # No positive on either side: 0/0 counts 0, as in PromptMRG.
    ce = compute_ce([row(Edema=-1)], [row(Edema=0)])
    assert (ce["ce_example_precision"], ce["ce_example_recall"], ce["ce_example_f1"]) == (0.0, 0.0, 0.0)


def test_uncertain_counts_as_positive_variant_by_hand():
    ce = compute_ce(REF, PRED)
    # -1 is positive on both sides: Edema becomes a tp (ref 1, pred -1); Fracture fp in report 2 (pred 1, ref
    # blank) and fn in report 3 (ref -1, pred blank). Per label: Cardiomegaly, Edema, No Finding (1,0,0),
    # Pneumothorax (0,0,1), Fracture (0,1,1): micro tp 3, fp 1, fn 2.
    assert ce["ce_upos_micro_precision"] == pytest.approx(3 / 4)
    assert ce["ce_upos_micro_recall"] == pytest.approx(3 / 5)
    assert ce["ce_upos_micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert ce["ce_upos_macro_f1"] == pytest.approx(3 / 14)
    # 5 labels: Cardiomegaly and Edema both (1,0,0).
    assert ce["ce5_upos_micro_f1"] == pytest.approx(1.0)
    assert ce["ce5_upos_macro_f1"] == pytest.approx(2 / 5)
    # The positive-only keys are unchanged by the variant.
    assert ce["ce_micro_f1"] == pytest.approx(4 / 7) and ce["ce5_micro_f1"] == pytest.approx(2 / 3)


def test_uncertain_agreement_counts_only_in_the_upos_variant():
    ce = compute_ce([row(Edema=-1)], [row(Edema=-1)])
    assert ce["ce_micro_f1"] == 0.0 and ce["ce_upos_micro_f1"] == 1.0 and ce["ce5_upos_micro_f1"] == 1.0


def test_uncertain_and_blank_are_negative():
    ce = compute_ce([row(Edema=-1, Cardiomegaly=None)], [row(Edema=-1, Cardiomegaly=0)])
    assert ce["ce_micro_f1"] == 0.0 and ce["per_label"]["Edema"]["support"] == 0


def test_perfect_prediction():
    ce = compute_ce(REF, REF)
    assert ce["ce_micro_f1"] == pytest.approx(1.0)
    # Macro still averages all 14 columns; 4 of them have positives.
    assert ce["ce_macro_f1"] == pytest.approx(4 / 14)


def test_per_label():
    per_label = compute_ce(REF, PRED)["per_label"]
    assert list(per_label) == list(CHEXPERT_LABELS)
    assert per_label["Cardiomegaly"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert per_label["Fracture"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert per_label["Edema"]["support"] == 1 and per_label["Edema"]["recall"] == 0.0


def test_all_keys():
    ce = compute_ce(REF, PRED)
    expected = {f"{p}_{avg}_{m}" for p in ("ce", "ce5", "ce_upos", "ce5_upos") for avg in ("micro", "macro")
                for m in ("precision", "recall", "f1")}
    expected |= {f"ce_example_{m}" for m in ("precision", "recall", "f1")}
    assert set(ce) == expected | {"per_label"}
    assert set(CE_KEYS) == expected  # the one list of keys (r2g.metrics.keys) is the one computed
    assert len(CHEXPERT_5) == 5


def test_ce_input_errors():
    with pytest.raises(R2GError, match="3 reference label rows but 2 prediction rows"):
        compute_ce(REF, PRED[:2])
    with pytest.raises(R2GError, match="prediction labels of report 0 lack 'Edema'"):
        compute_ce(REF[:1], [{k: v for k, v in REF[0].items() if k != "Edema"}])
    with pytest.raises(R2GError, match="no reports"):
        compute_ce([], [])


# ---- scoring files ------------------------------------------------------------------------------------------

REFS = {"1": "the heart is normal in size . no pneumothorax .", "2": "mild cardiomegaly . no effusion ."}
PREDS = {"1": "heart size is normal . no pneumothorax .", "2": "no acute disease ."}


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_r2gen_dict_files(tmp_path):
    pred = write(tmp_path / "pred.json", json.dumps({k: [v] for k, v in PREDS.items()}))
    ref = write(tmp_path / "ref.json", json.dumps({k: [v] for k, v in REFS.items()}))
    assert load_pairs(pred, ref) == (REFS, PREDS)


def test_load_jsonl(tmp_path):
    lines = [json.dumps({"id": int(k), "prediction": PREDS[k], "reference": REFS[k]}) for k in REFS]
    path = write(tmp_path / "gen.jsonl", "\n".join(lines) + "\n\n")
    assert load_pairs(path) == (REFS, PREDS)


@pytest.mark.parametrize("content,message", [
    ('{"id": "1", "prediction": "a", "reference": "b"}\n{"id": "2", "prediction": "a"', r"line 2: invalid JSON"),
    ('{"id": "1", "prediction": "a"}', r"line 1: missing key\(s\) reference"),
    ('["a", "b"]', r"line 1: expected a JSON object, found a list"),
    ('{"id": "1", "prediction": ["a"], "reference": "b"}', r"line 1: 'prediction' must be a string"),
    ('{"id": null, "prediction": "a", "reference": "b"}', r"line 1: 'id' must be a string or an integer"),
    ('{"id": 1, "prediction": "a", "reference": "b"}\n{"id": "1", "prediction": "a", "reference": "b"}',
     r"line 2: id '1' appears twice"),
    ("\n\n", r"no reports in the file"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "gen.jsonl", content)
    with pytest.raises(R2GError, match=message) as err:
        load_pairs(path)
    assert str(path) in str(err.value)


def test_r2gen_errors_name_file_and_key(tmp_path):
    ref = write(tmp_path / "ref.json", json.dumps({"1": ["a"]}))
    bad_value = write(tmp_path / "pred.json", json.dumps({"1": ["a", "b"]}))
    with pytest.raises(R2GError, match=r"pred.json: id '1' must map to \[text\]"):
        load_pairs(bad_value, ref)
    not_object = write(tmp_path / "list.json", "[1, 2]")
    with pytest.raises(R2GError, match="list.json: expected a JSON object"):
        load_pairs(not_object, ref)
    broken = write(tmp_path / "broken.json", '{"1": ["a"],\n')
    with pytest.raises(R2GError, match="broken.json: invalid JSON at line 2"):
        load_pairs(broken, ref)
    other_ids = write(tmp_path / "other.json", json.dumps({"2": ["a"]}))
    with pytest.raises(R2GError, match="other.json and .*ref.json: references and predictions must have the same ids"):
        load_pairs(other_ids, ref)
    with pytest.raises(R2GError, match="missing.json: file not found"):
        load_pairs(tmp_path / "missing.json", ref)


def test_r2gen_file_alone_gets_a_hint(tmp_path):
    path = write(tmp_path / "pred.json", json.dumps({k: [v] for k, v in PREDS.items()}, indent=2))
    with pytest.raises(R2GError, match=r"pred.json: an R2Gen \{id: \[text\]\} file, not JSONL: pass the reference"):
        load_pairs(path)


def test_score_joins_nlg_and_ce():
    results = score(REFS, PREDS, meteor=False, per_report_labels=True)
    assert results["num_reports"] == 2
    assert {"BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr", "ce_micro_f1", "ce5_macro_f1", "ce_example_f1",
            "per_label"} <= set(results)
    assert "METEOR" not in results
    assert set(HEADLINE) - {"METEOR"} <= set(results)  # every printed / selectable key is computed
    labels = results["labels"]
    assert labels["2"]["reference"]["Cardiomegaly"] == 1 and labels["2"]["prediction"]["Cardiomegaly"] is None
    assert labels["1"]["prediction"]["No Finding"] == 1
    # Report 1: No Finding matches; report 2: Cardiomegaly missed, No Finding predicted wrongly.
    assert results["ce_micro_precision"] == pytest.approx(1 / 2)
    assert results["ce_micro_recall"] == pytest.approx(1 / 2)


def test_score_rejects_a_bad_labeler_before_nlg():
    with pytest.raises(R2GError, match="--labeler-weights"):
        score(REFS, PREDS, meteor=False, labeler="chexbert")


def test_metrics_import_no_model_code():
    code = "import sys, r2g.metrics.score; assert not {'torch', 'transformers', 'deepspeed'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_tables_show_both_ce_conventions(tmp_path):
    """metrics.json's CE keys reach the report's metric table, each variant on its own labelled row."""
    from r2g.eval.report import write_report

    ce = compute_ce(REF, PRED)
    rows = [{"id": "a", "prediction": "p", "reference": "r", "score": 0.5, "labels_pred": PRED[0], "labels_ref": REF[0]}]
    markdown = write_report(tmp_path, rows, ce, {}, "run", n_examples=0)["markdown"].read_text()
    upos = next(line for line in markdown.splitlines() if "14 labels, uncertain counts as positive" in line)
    assert f"{ce['ce_upos_micro_f1']:.3f}" in upos and f"{ce['ce_upos_micro_precision']:.3f}" in upos
    five_upos = next(line for line in markdown.splitlines() if "5 labels, uncertain counts as positive" in line)
    assert f"{ce['ce5_upos_micro_f1']:.3f}" in five_upos
    assert "Other metrics" not in markdown  # every CE key has its row, none is left to the catch-all table
