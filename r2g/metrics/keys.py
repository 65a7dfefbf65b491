"""The metric keys of metrics.json in one place: what `r2g eval` / `r2g score` print, what `--select-metric`
accepts, and the rows of the report's metric tables all come from here.

Clinical efficacy (CE) keys are `{prefix}_{average}_{precision,recall,f1}`:
- `ce_*`: 14 CheXpert labels, only 1 counts as positive (R2Gen-family `compute_ce`);
- `ce_upos_*`: 14 labels, uncertain (-1) counts as positive on both sides (LLaVA-Rad, CheXagent);
- `ce5_*`, `ce5_upos_*`: the same over the 5 labels CHEXPERT_5;
- `ce_example_*`: PromptMRG's per-report scores, averaged (only 1 positive).
"""

from __future__ import annotations

from r2g.labels import CHEXPERT_5

# (key, display name) of the language metrics, in the order papers print them.
NLG_METRICS = (("BLEU_1", "BLEU-1"), ("BLEU_2", "BLEU-2"), ("BLEU_3", "BLEU-3"), ("BLEU_4", "BLEU-4"),
               ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"), ("CIDEr", "CIDEr"))

CE_SCORES = ("precision", "recall", "f1")
_FIVE = ", ".join(CHEXPERT_5)
# (convention, ((average, key prefix), ...)): each key prefix has _precision, _recall and _f1 keys.
CE_CONVENTIONS = (
    ("14 labels, positive = 1 only (R2Gen compute_ce)", (("micro", "ce_micro"), ("macro", "ce_macro"))),
    ("14 labels, uncertain counts as positive (LLaVA-Rad, CheXagent)",
     (("micro", "ce_upos_micro"), ("macro", "ce_upos_macro"))),
    ("example-based (PromptMRG), positive = 1 only", (("per report", "ce_example"),)),
    (f"5 labels ({_FIVE}), positive = 1 only", (("micro", "ce5_micro"), ("macro", "ce5_macro"))),
    ("5 labels, uncertain counts as positive (LLaVA-Rad, CheXagent)",
     (("micro", "ce5_upos_micro"), ("macro", "ce5_upos_macro"))),
)
CE_KEYS = tuple(f"{prefix}_{score}" for _, averages in CE_CONVENTIONS for _, prefix in averages for score in CE_SCORES)

# (key, display name) of the model-based metrics (r2g.metrics.model_based), each from a local folder; metrics.json
# records under "weights" which weights made each.
MODEL_METRICS = (
    ("radgraph_simple", "RadGraph F1, entities (RG_E)"),
    ("radgraph_partial", "RadGraph F1, entities + has-relation (RG_ER)"),
    ("radgraph_complete", "RadGraph F1, entities + relations (RG_ER-bar)"),
    ("radgraph_combined", "RadGraph, mean of entity F1 and relation F1 (ReXrank, RadCliQ)"),
    ("bertscore_f1", "BERTScore F1, distilroberta-base layer 5, rescaled (ReXrank)"),
    ("chexbert_micro_f1", "CheXbert micro F1, 14 labels, uncertain = positive (f1chexbert)"),
    ("chexbert_macro_f1", "CheXbert macro F1, 14 labels, uncertain = positive (f1chexbert)"),
    ("chexbert5_micro_f1", "CheXbert micro F1, 5 labels, uncertain = positive (f1chexbert)"),
    ("chexbert5_macro_f1", "CheXbert macro F1, 5 labels, uncertain = positive (f1chexbert)"),
    ("chexbert5_accuracy", "CheXbert 5-label exact-match accuracy (f1chexbert)"),
    ("sembscore", "SembScore: cosine of CheXbert embeddings (ReXrank, RadCliQ)"),
    ("ratescore", "RaTEScore"),
    ("green", "GREEN (LLM judge)"),
    ("radcliq_v1", "RadCliQ-v1, mean over reports (lower is better; ReXrank ranks by its inverse)"),
)
MODEL_KEYS = tuple(key for key, _ in MODEL_METRICS)

# The headline numbers, with what each means: printed after eval / score and by the demo, and the scores
# `--select-metric` can pick.
HEADLINE = {
    **{key: name for key, name in NLG_METRICS},
    "ce_micro_precision": "CE micro precision, 14 labels",
    "ce_micro_recall": "CE micro recall, 14 labels",
    "ce_micro_f1": "CE micro F1, 14 labels",
    "ce_macro_f1": "CE macro F1, 14 labels",
    "ce_example_f1": "CE example-based F1",
    "ce5_micro_f1": "CE micro F1, 5 labels",
    "ce_upos_micro_f1": "CE micro F1, 14 labels, uncertain = positive",
    "ce5_upos_micro_f1": "CE micro F1, 5 labels, uncertain = positive",
}
# What `r2g eval` / `r2g score` print: the headline numbers, then the model-based metrics that were run.
PRINTED = {**HEADLINE, **dict(MODEL_METRICS)}
