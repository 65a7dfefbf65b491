"""BERTScore as the ReXrank leaderboard and RadCliQ compute it, through the `bert-score` package
(pip install r2g[metrics]), from a local folder.

ReXrank takes BERTScore from rajpurkarlab/CXR-Report-Metric: `BERTScorer(model_type="distilroberta-base",
lang="en", rescale_with_baseline=True, idf=False)`, i.e. DistilRoBERTa-base, layer 5 (bert-score's layer for that
model), no idf weighting, F1 rescaled with bert-score's own baseline for distilroberta-base / English
(rescale_baseline/en/distilroberta-base.tsv, shipped inside the package: rescaled = (F1 - b) / (1 - b)), each
report's runs of spaces collapsed to one first. r2g does exactly that with the model read from `--bertscore DIR`
(a save_pretrained copy of distilroberta-base): `bertscore_f1` is the mean over reports of the rescaled F1.
Because the baseline belongs to distilroberta-base, any other model is refused rather than scored on the wrong
scale.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from r2g.errors import R2GError
from r2g.metrics.local_weights import fingerprint, offline, require_hf_model, tokenizer_v4_methods

MODEL = "distilroberta-base"
LAYER = 5
HOLDS = f"{MODEL} saved with save_pretrained (config.json, weights, vocab.json + merges.txt)"


def check_folder(path: str | Path) -> Path:
    folder = require_hf_model("--bertscore", path, HOLDS)
    config = json.loads((folder / "config.json").read_text())
    shape = (config.get("model_type"), config.get("num_hidden_layers"))
    if shape != ("roberta", 6):
        raise R2GError(f"--bertscore {folder}: a {shape[0]} model with {shape[1]} layers, not {MODEL} (roberta, "
                       f"6 layers): ReXrank's BERTScore is {MODEL}'s layer {LAYER}, rescaled with that model's "
                       "baseline")
    return folder


def baseline_file() -> Path:
    import bert_score

    return Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{MODEL}.tsv"


class BERTScoreScorer:
    def __init__(self, path: str | Path):
        self.folder = check_folder(path)
        try:
            tokenizer_v4_methods()  # bert-score encodes an empty report with build_inputs_with_special_tokens
            from bert_score import BERTScorer
        except ImportError as e:
            raise R2GError(f"--bertscore needs the bert-score package: pip install 'r2g[metrics]' ({e})") from None
        self.weights = fingerprint(self.folder)
        with offline():
            self._scorer = BERTScorer(model_type=str(self.folder), num_layers=LAYER, lang="en", idf=False,
                                      rescale_with_baseline=True, baseline_path=str(baseline_file()),
                                      device="cpu" if not _cuda() else "cuda")

    def score(self, refs: list[str], preds: list[str]) -> list[float]:
        """Rescaled F1 per report."""
        collapse = [re.sub(r" +", " ", text) for text in preds], [re.sub(r" +", " ", text) for text in refs]
        with offline():
            _, _, f1 = self._scorer.score(*collapse, batch_size=64)
        return [float(x) for x in f1]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
