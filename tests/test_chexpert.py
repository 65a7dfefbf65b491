"""The rule-based CheXpert-style labeler on real IU-Xray report language.

Every sentence in REAL_CASES is quoted verbatim from the IU-Xray train/val reports
(/work/shared/data/iu_xray_reports_train_val.json; test_cases_are_real checks this where the file exists).
Expected labels are hand-assigned; labels not listed are expected blank (None).
"""

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from r2g.errors import R2GError
from r2g.labels import CHEXPERT_LABELS
from r2g.metrics.chexpert import (OTHER_FINDINGS, Mention, aggregate, label_report, label_reports, load_labeler,
                                  mentions)

DATA = Path(os.environ.get("R2G_IU_REPORTS", "/work/shared/data/iu_xray_reports_train_val.json"))

NF = "No Finding"
REAL_CASES = [
    # Normal heart / mediastinum: structure + normality qualifier -> 0.
    ("The heart is normal in size.", {"Cardiomegaly": 0, NF: 1}),
    ("Heart size normal.", {"Cardiomegaly": 0, NF: 1}),
    ("Normal heart size and mediastinal contours.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, NF: 1}),
    ("Heart and mediastinum normal.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, NF: 1}),
    ("The cardiomediastinal silhouette is normal in size and contour.", {"Enlarged Cardiomediastinum": 0, NF: 1}),
    ("Cardiac and mediastinal contours are within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, NF: 1}),
    ("The mediastinum is unremarkable.", {"Enlarged Cardiomediastinum": 0, NF: 1}),
    ("The heart is not significantly enlarged.", {"Cardiomegaly": 0, NF: 1}),
    ("The heart silhouette and mediastinal contours are not enlarged.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, NF: 1}),
    # Enlargement -> 1; borderline -> -1.
    ("Mild cardiomegaly.", {"Cardiomegaly": 1}),
    ("Stable cardiomegaly.", {"Cardiomegaly": 1}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": 1}),
    ("Heart size is enlarged but stable.", {"Cardiomegaly": 1}),
    ("Stable enlarged cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": 1}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": 1}),
    # "enlarged" belongs to the heart, not to the mediastinal contours after it, which are stable (-1, below).
    ("Heart size mildly enlarged, stable mediastinal and hilar contours.",
     {"Cardiomegaly": 1, "Enlarged Cardiomediastinum": -1}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": -1}),
    ("Borderline enlarged heart.", {"Cardiomegaly": -1}),
    # CheXpert: "top normal" and "upper limits of normal" are normal (its negation patterns on "normal").
    ("The heart is top normal in size.", {"Cardiomegaly": 0, NF: 1}),
    ("The heart size is top normal, cardiomediastinal silhouette within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, NF: 1}),
    ("Heart size upper limits of normal.", {"Cardiomegaly": 0, NF: 1}),
    # CheXpert: a stable / unchanged silhouette, heart or mediastinum is uncertain, unless called normal.
    ("The mediastinum is stable.", {"Enlarged Cardiomediastinum": -1}),
    ("Stable cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": -1}),
    ("Stable heart size.", {"Cardiomegaly": -1}),
    ("Stable normal heart size.", {"Cardiomegaly": 0, NF: 1}),
    ("Stable cardiomediastinal silhouette with normal heart size.",
     {"Enlarged Cardiomediastinum": -1, "Cardiomegaly": 0}),
    # The enlarged silhouette may be effusion: cardiomegaly is uncertain.
    ("Mildly enlarged cardiac silhouette; cardiomegaly versus pericardial effusion.", {"Cardiomegaly": -1}),
    # Negations, including long lists and post-mention triggers.
    ("No pneumothorax.", {"Pneumothorax": 0, NF: 1}),
    ("There is no pneumothorax.", {"Pneumothorax": 0, NF: 1}),
    ("No pneumothorax or pleural effusion.", {"Pneumothorax": 0, "Pleural Effusion": 0, NF: 1}),
    ("No focal airspace disease.", {"Lung Opacity": 0, NF: 1}),
    ("No focal consolidation, pleural effusion, or pneumothorax identified.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0, NF: 1}),
    ("No pneumonia, effusions, edema, pneumothorax, adenopathy, nodules or masses.",
     {"Pneumonia": 0, "Pleural Effusion": 0, "Edema": 0, "Pneumothorax": 0, "Lung Lesion": 0, NF: 1}),
    ("The lungs are clear of focal airspace disease, pneumothorax, or pleural effusion.",
     {"Lung Opacity": 0, "Pneumothorax": 0, "Pleural Effusion": 0, NF: 1}),
    ("No typical findings of pulmonary edema.", {"Edema": 0, NF: 1}),
    ("There are no nodules or masses.", {"Lung Lesion": 0, NF: 1}),
    ("Negative for acute displaced rib fracture.", {"Fracture": 0, NF: 1}),
    ("The lungs do not demonstrate focal infiltrate or effusion.", {"Lung Opacity": 0, "Pleural Effusion": 0, NF: 1}),
    ("However, no retrocardiac pleural fluid collection is seen on the lateral view.", {"Pleural Effusion": 0, NF: 1}),
    ("The left apical pneumothorax has resolved.", {"Pneumothorax": 0, NF: 1}),
    # A negation reaches through "to suggest": nothing suggests pneumonia.
    ("There is no focal air space opacity to suggest a pneumonia.", {"Lung Opacity": 0, "Pneumonia": 0, NF: 1}),
    ("There is no pleural line to suggest pneumothorax or costophrenic XXXX blunting to suggest large pleural "
     "effusion.", {"Pneumothorax": 0, "Pleural Effusion": 0, NF: 1}),
    # Clear lungs and findings outside CheXpert's lists label nothing.
    ("The lungs are clear.", {NF: 1}),
    ("No acute cardiopulmonary abnormality.", {NF: 1}),
    ("Tortuous aorta.", {NF: 1}),
    ("There may be a pericardial effusion.", {NF: 1}),
    ("XXXX sternotomy XXXX are intact.", {NF: 1}),
    ("Cholecystectomy clips are present.", {NF: 1}),
    # CheXpert's "other findings": no label, and no No Finding either.
    ("There are diffuse degenerative changes of the spine.", {}),
    ("Degenerative changes of the spine.", {}),
    ("Emphysema.", {}),
    ("Mild hyperinflation.", {}),
    ("Prior granulomatous disease.", {}),
    ("Evidence of previous granulomatous infection.", {}),  # an old infection is not pneumonia (r2g's unmention)
    ("There are scattered calcified granulomas.", {}),
    ("Calcified granulomas.", {}),
    ("There is an 8 mm calcified nodule in the left midlung.", {}),  # CheXpert unmentions "calcified nodul"
    ("Bilateral costophrenic XXXX blunting is present.", {}),  # CheXpert's "blunt" is no effusion
    ("Retrocardiac soft tissue density.", {}),
    ("Stable right-sided volume loss.", {}),
    ("Metastatic disease cannot be excluded.", {}),
    # ... negated, they leave No Finding alone.
    ("No XXXX of metastasis.", {NF: 1}),
    # Screws are Support Devices (CheXpert); a broken screw is no bone fracture (r2g's unmention).
    ("The lateral most screw is fractured.", {"Support Devices": 1, NF: 1}),
    # Lung Lesion is CheXpert's list: masses, nodules, nodular opacities.
    ("Left midlung mass.", {"Lung Lesion": 1}),
    ("Right upper lobe 6 mm nodular opacity.", {"Lung Lesion": 1, "Lung Opacity": 1}),
    ("No effusion or noncalcified nodules.", {"Pleural Effusion": 0, "Lung Lesion": 0, NF: 1}),
    # CheXpert: a positive or uncertain CHF / heart failure makes Cardiomegaly uncertain; a negated one does not.
    ("Findings consistent with mild congestive heart failure.", {"Edema": 1, "Cardiomegaly": -1}),
    ("Cardiomegaly without heart failure.", {"Cardiomegaly": 1, "Edema": 0}),
    ("No effusions or CHF.", {"Pleural Effusion": 0, "Edema": 0, "Cardiomegaly": 0, NF: 1}),
    # CheXpert: vascular congestion is at most uncertain Edema.
    ("Cardiomegaly and pulmonary vascular congestion.", {"Cardiomegaly": 1, "Edema": -1}),
    ("No pulmonary vascular congestion.", {"Edema": 0, NF: 1}),
    # CheXpert: "or" hedges both sides unless negated; "exclude", "history of" negate.
    ("Minimal left basilar atelectasis or scar.", {"Atelectasis": -1, "Lung Opacity": -1}),
    ("Consider oblique images to exclude true nodule.", {"Lung Lesion": 0, NF: 1}),
    ("Correlate clinically with history of fracture.", {"Fracture": 0, NF: 1}),
    # Positives.
    ("Small bilateral pleural effusions.", {"Pleural Effusion": 1}),
    ("There is a right lower lobe pneumonia.", {"Pneumonia": 1}),
    ("Mild interstitial edema.", {"Edema": 1}),
    ("Old right rib fractures.", {"Fracture": 1}),
    ("There is a moderate sized right pneumothorax.", {"Pneumothorax": 1}),
    ("Mild left apical pleural thickening.", {"Pleural Other": 1}),
    ("The outside x-XXXX is normal except for slight cardiomegaly.", {"Cardiomegaly": 1}),
    # "no change" is no negation.
    ("No change in moderate left pneumothorax with left pleural drainage catheter again seen overlying the left "
     "upper lung.", {"Pneumothorax": 1, "Support Devices": 1}),
    # Support devices do not stop No Finding.
    ("Stable right chest wall pacemaker with leads overlie the right atrium and right ventricle.",
     {"Support Devices": 1, NF: 1}),
    ("Left PICC line remains in XXXX.", {"Support Devices": 1, NF: 1}),
    # Uncertainty, before and after the mention.
    ("Probable right lower lobe pneumonia.", {"Pneumonia": -1}),
    ("Left lower lobe airspace disease suspicious for pneumonia.", {"Lung Opacity": 1, "Pneumonia": -1}),
    ("Bibasilar atelectasis versus scarring.", {"Atelectasis": -1, "Lung Opacity": -1}),
    ("Left basilar patchy opacities, which may represent atelectasis or infection.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Cardiomegaly which appears XXXX from XXXX with probable mild pulmonary edema.",
     {"Cardiomegaly": 1, "Edema": -1}),
    ("A subtle infiltrate cannot be excluded.", {"Lung Opacity": -1}),
    ("However, true pulmonary nodule is a possibility.", {"Lung Lesion": -1}),
    # Scope breaker: the hedge before "but" does not reach the mention after it, the post-trigger does.
    ("Opacity in the lingula is favored to represent prominent pericardial fat, but lingular atelectasis or "
     "infiltrate cannot be ruled out.", {"Lung Opacity": 1, "Atelectasis": -1}),
]

REAL_REPORTS = [
    ("The heart size is normal. The mediastinal contour is within normal limits. There is a streaky opacity within "
     "the right upper lobe. There are no nodules or masses. No visible pneumothorax. No visible pleural fluid. The "
     "XXXX are grossly normal. There is no visible free intraperitoneal air under the diaphragm. Right upper lobe "
     "infiltrate consistent with pneumonia.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "Lung Opacity": 1, "Lung Lesion": 0, "Pneumothorax": 0,
      "Pleural Effusion": 0, "Pneumonia": 1}),
    ("XXXX XXXX and lateral chest examination was obtained. The heart silhouette is normal in size and contour. "
     "Aortic XXXX appear unremarkable. Lungs demonstrate no acute findings. There is no effusion or pneumothorax. "
     "1. No acute pulmonary disease.",
     {"Cardiomegaly": 0, "Pleural Effusion": 0, "Pneumothorax": 0, NF: 1}),
]


def _non_blank(labels: dict) -> dict:
    return {k: v for k, v in labels.items() if v is not None}


@pytest.mark.parametrize("text,expected", REAL_CASES + REAL_REPORTS, ids=lambda x: x[:50] if isinstance(x, str) else "")
def test_real_sentence(text, expected):
    assert _non_blank(label_report(text)) == expected


def test_scope_breaker_stops_negation():
    # The brief's example (not verbatim in IU-Xray, where such sentences are rare).
    assert _non_blank(label_report("No pneumothorax, but there is a small left effusion.")) == {
        "Pneumothorax": 0, "Pleural Effusion": 1}
    assert _non_blank(label_report("No pneumothorax, there is a small left effusion.")) == {
        "Pneumothorax": 0, "Pleural Effusion": 0, NF: 1}  # without a breaker the negation runs on


def test_nearest_trigger_decides():
    assert _non_blank(label_report("Possible small effusion without pneumothorax.")) == {
        "Pleural Effusion": -1, "Pneumothorax": 0}


def test_all_keys_and_values():
    labels = label_report("")
    assert list(labels) == list(CHEXPERT_LABELS)
    assert labels == {**{k: None for k in CHEXPERT_LABELS}, NF: 1}  # nothing mentioned -> No Finding


def test_mentions_explain_the_decision():
    found = mentions("Heart size is upper limits of normal. No pneumothorax. Calcified granuloma.")
    assert [(m.label, m.text, m.status, m.cue, m.sentence) for m in found] == [
        ("Cardiomegaly", "heart size", 0, "upper limits of normal", 0),
        ("Pneumothorax", "pneumothorax", 0, "no", 1),
        ("Other Findings", "calcified", 1, None, 2),
        ("Other Findings", "granuloma", 1, None, 2),
    ]


def _m(label, status):
    return Mention(label, "x", 0, 1, 0, status, None)


def test_aggregation_order_positive_uncertain_negative():
    labels = aggregate([_m("Edema", 0), _m("Edema", -1), _m("Edema", 1)])
    assert labels["Edema"] == 1
    assert aggregate([_m("Edema", 0), _m("Edema", -1)])["Edema"] == -1
    assert aggregate([_m("Edema", 0), _m("Edema", 0)])["Edema"] == 0
    assert aggregate([_m("Edema", 0)])["Atelectasis"] is None


def test_no_finding_rule():
    assert aggregate([])[NF] == 1
    assert aggregate([_m("Pneumothorax", 0), _m("Cardiomegaly", 0)])[NF] == 1
    assert aggregate([_m("Support Devices", 1)])[NF] == 1
    assert aggregate([_m("Support Devices", 1), _m("Fracture", 1)])[NF] is None
    assert aggregate([_m("Lung Lesion", -1)])[NF] is None
    # CheXpert's other findings: positive or uncertain stop No Finding and set no label; negated do nothing.
    assert aggregate([_m(OTHER_FINDINGS, 1)]) == {label: None for label in CHEXPERT_LABELS}
    assert aggregate([_m(OTHER_FINDINGS, -1)])[NF] is None
    assert aggregate([_m(OTHER_FINDINGS, 0)])[NF] == 1


def test_the_issue_example():
    """Issue 9: CheXpert (and CheXbert) do not call this report No Finding, and it has none of the 14 labels."""
    assert label_report("calcified granuloma. degenerative changes of the spine.") == {
        label: None for label in CHEXPERT_LABELS}
    assert label_report("calcified granuloma. no degenerative changes of the spine.")[NF] is None
    assert label_report("no calcified granuloma. no degenerative changes of the spine.")[NF] == 1


def test_or_yields_to_negation_and_reaches_only_its_neighbours():
    assert _non_blank(label_report("atelectasis or pneumonia.")) == {"Atelectasis": -1, "Pneumonia": -1}
    assert _non_blank(label_report("no pneumothorax or pleural effusion.")) == {
        "Pneumothorax": 0, "Pleural Effusion": 0, NF: 1}
    # "or" joins pneumothorax and effusion, not the emphysema four words before it.
    assert [(m.text, m.status) for m in mentions("emphysema of both lungs with pneumothorax or effusion")
            if m.label == OTHER_FINDINGS] == [("emphysema", 1)]


def test_chexpert_uncertainty_before_negation():
    # "cannot exclude" / "cannot rule out" win over the negating "exclude" / "rule out" inside them.
    assert label_report("cannot exclude pneumonia.")["Pneumonia"] == -1
    assert label_report("cannot rule out pneumonia.")["Pneumonia"] == -1
    assert label_report("no new consolidation.")["Consolidation"] == -1
    assert label_report("no consolidation.")["Consolidation"] == 0


def test_label_reports_batch():
    texts = ["Mild cardiomegaly.", "No pneumothorax."]
    assert label_reports(texts) == [label_report(t) for t in texts]


def test_rules_labeler_is_label_reports():
    assert load_labeler("rules") is label_reports


def test_unknown_labeler():
    with pytest.raises(R2GError, match="unknown labeler 'bert'"):
        load_labeler("bert")


def test_chexbert_needs_weights(tmp_path):
    with pytest.raises(R2GError, match="--labeler-weights"):
        load_labeler("chexbert")
    with pytest.raises(R2GError, match="no such folder"):
        load_labeler("chexbert", str(tmp_path / "missing"))
    with pytest.raises(R2GError, match="chexbert.pth not found"):
        load_labeler("chexbert", str(tmp_path))
    (tmp_path / "chexbert.pth").write_bytes(b"")
    with pytest.raises(R2GError, match="bert-base-uncased/config.json"):
        load_labeler("chexbert", str(tmp_path))


def test_chexbert_loads_a_local_checkpoint(tmp_path):
    """A tiny random CheXbert-shaped checkpoint goes through the real loading and labelling code."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    bert_dir = tmp_path / "bert-base-uncased"
    bert_dir.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pneumothorax", "mild", "cardiomegaly", "."]
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)
    config.save_pretrained(bert_dir)
    heads = torch.nn.ModuleList([torch.nn.Linear(32, 4) for _ in range(13)] + [torch.nn.Linear(32, 2)])
    state = {f"module.bert.{k}": v for k, v in transformers.BertModel(config).state_dict().items()}
    state.update({f"module.linear_heads.{k}": v for k, v in heads.state_dict().items()})
    torch.save({"model_state_dict": state}, tmp_path / "chexbert.pth")

    rows = load_labeler("chexbert", str(tmp_path))(["no pneumothorax .", "mild cardiomegaly ."])
    assert [list(r) for r in rows] == [list(CHEXPERT_LABELS)] * 2
    assert all(set(r.values()) <= {1, 0, -1, None} and r[NF] in (1, None) for r in rows)

    torch.save({"model_state_dict": {"module.linear_heads.0.weight": torch.zeros(4, 32)}}, tmp_path / "chexbert.pth")
    with pytest.raises(R2GError, match="not a CheXbert checkpoint"):
        load_labeler("chexbert", str(tmp_path))


class _RunsCode:
    """Unpickling this calls exec: what a malicious .pth could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_chexbert_refuses_a_checkpoint_that_carries_code(tmp_path):
    torch = pytest.importorskip("torch")
    (tmp_path / "bert-base-uncased").mkdir()
    for name in ("config.json", "vocab.txt"):
        (tmp_path / "bert-base-uncased" / name).write_text("{}")
    marker = tmp_path / "ran.txt"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}, "extra": _RunsCode(marker)}, tmp_path / "chexbert.pth")
    with pytest.raises(R2GError, match=r"chexbert.pth: refused to load: it refers to exec, not only to weights"):
        load_labeler("chexbert", str(tmp_path))
    assert not marker.exists()  # weights_only=True: the code never ran
    (tmp_path / "chexbert.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(R2GError, match="chexbert.pth: not a readable torch checkpoint"):
        load_labeler("chexbert", str(tmp_path))


# ---- over the real file -------------------------------------------------------------------------------------

needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} not available")


@pytest.fixture(scope="module")
def real_reports() -> list[str]:
    data = json.loads(DATA.read_text())
    return [row["report"] for split in data.values() for row in split]


@needs_data
def test_cases_are_real(real_reports):
    text = " ".join(real_reports)
    missing = [s for s, _ in REAL_CASES + REAL_REPORTS if s not in text]
    assert not missing


@needs_data
def test_cleaned_text_gives_the_same_labels(real_reports):
    from r2g.data.reports import clean_iu_xray

    raw = label_reports(real_reports)
    cleaned = label_reports([clean_iu_xray(r) for r in real_reports])
    same = [a == b for a, b in zip(raw, cleaned)]
    # Cleaning deletes "/" and joins words ("atelectasis/airspace" -> one word): < 2 % of reports change.
    assert sum(same) / len(same) > 0.98
    without_slash = [s for s, r in zip(same, real_reports) if "/" not in r]
    assert sum(without_slash) / len(without_slash) > 0.995


@needs_data
def test_label_distribution_is_plausible(real_reports):
    labels = label_reports(real_reports)
    n = len(labels)
    positive = Counter(k for row in labels for k, v in row.items() if v == 1)
    assert all(set(row.values()) <= {1, 0, -1, None} for row in labels)
    # IU-Xray is about half normal by CheXpert's rules (its "other findings" such as granulomas and degenerative
    # spine changes are common); cardiomegaly is its common labelled finding; granulomas are no Lung Lesion.
    assert 0.35 < positive[NF] / n < 0.50
    assert 0.05 < positive["Cardiomegaly"] / n < 0.12
    assert 0.02 < positive["Lung Lesion"] / n < 0.07
    assert 0.02 < positive["Pleural Effusion"] / n < 0.08
    assert positive["Pneumothorax"] / n < 0.02
    assert all(positive[k] > 0 for k in CHEXPERT_LABELS)


@needs_data
def test_no_finding_never_with_a_finding(real_reports):
    for report in real_reports[:500]:
        row = label_report(report)
        findings = [k for k, v in row.items() if v in (1, -1) and k not in (NF, "Support Devices")]
        others = [m for m in mentions(report) if m.label == OTHER_FINDINGS and m.status in (1, -1)]
        assert (row[NF] == 1) == (not findings and not others)


def test_phrase_gaps_stay_in_their_sentence():
    # "mediastinal ... granuloma" (an unmention) must not reach across a sentence end.
    assert label_report("Normal heart size and mediastinal contours. Scattered calcified granulomas.")[
        "Enlarged Cardiomediastinum"] == 0


def test_whole_words_only():
    assert _non_blank(label_report("Status post cholecystectomy.")) == {NF: 1}  # contains "cyst"
    # CheXpert's substrings would find a Support Device ("tube", "plate") in each of these.
    assert _non_blank(label_report("No evidence of tuberculosis.")) == {NF: 1}
    assert _non_blank(label_report("Degenerative endplate changes.")) == {}  # an other finding, no device
    assert _non_blank(label_report("Right basilar plate-like atelectasis.")) == {"Atelectasis": 1}
    assert _non_blank(label_report("Screw fixation of the clavicle.")) == {"Support Devices": 1, NF: 1}


def test_label_stats_bench_counts_each_label(tmp_path):
    """bench/label_stats.py (the figures in bench/RESULTS.md) on two hand-labelled reports."""
    import subprocess
    import sys

    reports = {"train": [{"id": "1", "report": "Mild cardiomegaly. No pneumothorax."}],
               "val": [{"id": "2", "report": "Calcified granuloma. Degenerative changes of the spine."}]}
    (tmp_path / "a.json").write_text(json.dumps(reports))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "label_stats.py"), "--reports", str(tmp_path / "a.json")],
                         capture_output=True, text=True, check=True, cwd=root).stdout
    assert "| Cardiomegaly | 1 | 0 | 0 | 1 |" in out
    assert "| Pneumothorax | 0 | 0 | 1 | 1 |" in out
    assert "| No Finding | 0 | 0 | 0 | 2 |" in out and "No Finding positive: 0.0% of reports" in out
