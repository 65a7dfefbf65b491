"""RaTEScore (Zhao et al., 2024; package `RaTEScore` 0.6.0), reimplemented: the package imports medspacy at
import time, and medspacy (through spaCy 3.7) would downgrade numpy below r2g's pins, so r2g cannot import it.
Everything after sentence splitting follows the package step by step, and tests/test_model_metrics.py checks
r2g's scores equal the package's own (its medspacy import stubbed with r2g's splitter) on tiny models.

Per report pair:
1. Split each report into sentences (the package: medspacy's PyRuSH; r2g: at . ? ! followed by a space or the
   end, and at line breaks, which agree on R2Gen-cleaned text "a . b ."); drop sentences with no word or
   shorter than 3 characters.
2. Tag each sentence with the NER model (`--ratescore DIR/ner`, a token classifier; the published one is
   Angelakeke/RaTE-NER-Deberta), 16 sentences a batch with padding masked (the package's default batch is 1;
   the tests compare both at 16), and read entities off its B-/I- tags with the package's rules (`_spans`).
3. Embed each entity string with the synonym encoder (`--ratescore DIR/encoder`, published
   FremyCompany/BioLORD-2023-C): the [CLS] vector of its last hidden state, at most 30 tokens.
4. Each reference entity takes its most cosine-similar candidate entity; the similarities are averaged,
   weighted by the package's type-pair affinity ("long" matrix, its default) and scaled by its negation
   weight where the two types disagree on negation; the same the other way round; RaTEScore is their harmonic
   mean, 0.5 when either report has no entity.
`ratescore` is the mean over reports.
"""

from __future__ import annotations

import re
from pathlib import Path

from r2g.errors import R2GError
from r2g.metrics.local_weights import fingerprint, offline, require_folder, require_hf_model

HOLDS = ("ner/ (the RaTE NER token classifier, e.g. Angelakeke/RaTE-NER-Deberta) and encoder/ (the synonym "
         "encoder, e.g. FremyCompany/BioLORD-2023-C), each saved with save_pretrained")

# The package's default type-pair affinities ("long" reports) and negation weight (RaTEScore/scorer.py,
# DEFAULT_MATRIX_LONG), keyed (reference type, candidate type).
_TYPES = ("ABNORMALITY", "ANATOMY", "DISEASE", "NON-ABNORMALITY", "NON-DISEASE")
_LONG = (
    (0.4276119164393705, 0.6240929990607657, 0.0034478181112993847, 0.5431049700217344, 0.27005425386213877),
    (0.7487824274337533, 0.2856134859160784, 0.4592143222158069, 0.02097055139911715, 0.00013736314126696204),
    (0.8396510075734789, 0.9950209388542061, 0.8460555030578727, 0.9820689020512646, 0.3789136708096537),
    (0.16546764653692908, 0.018670610691852826, 0.719397354576018, 0.0009357166071730684, 0.0927333564267591),
    (0.7759420231214385, 0.1839139293714062, 0.10073046076318157, 0.03860183811876373, 0.34065681486566446),
)
AFFINITY = {(a, b): _LONG[i][j] for i, a in enumerate(_TYPES) for j, b in enumerate(_TYPES)}
NEGATION_WEIGHT = 0.8716553966489615
# Type pairs that disagree on negation (a finding against its absence): scaled by NEGATION_WEIGHT.
_NEGATED = {("NON-DISEASE", "DISEASE"), ("NON-ABNORMALITY", "ABNORMALITY"), ("DISEASE", "NON-DISEASE"),
            ("ABNORMALITY", "NON-ABNORMALITY"), ("NON-DISEASE", "ABNORMALITY"), ("NON-ABNORMALITY", "DISEASE"),
            ("DISEASE", "NON-ABNORMALITY"), ("ABNORMALITY", "NON-DISEASE")}
EMPTY_SCORE = 0.5
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a report, without the empty or tiny ones (fewer than 3 characters) the package drops."""
    parts = (s.strip() for s in _SENTENCE_END.split(text))
    return [s for s in parts if s.split() and len(s) >= 3]


def _spans(tokens: list[str], tags: list[str]) -> list[tuple[int, int, str]]:
    """(first, last, type) entity spans from B-/I-/O tags, by the package's rules (utils.post_process), kept as
    they are, quirks included: a span opens at a B- followed by I- and closes at an I- (or B-) followed by a
    B- or O; a lone B- is a one-token entity; a span still open at the end runs to the token before [SEP]."""
    spans, start, end, kind = [], None, None, None
    for i, (token, tag) in enumerate(zip(tokens, tags)):
        # `tags` is the whole padded row, as in the package: the next tag may be a padding position's.
        if token in ("[CLS]", "[SEP]") or tag == "O" or i >= len(tags) - 1:
            continue
        nxt = tags[i + 1]
        if tag.startswith("B-"):
            if nxt.startswith("I-"):
                start, kind = i, tag[2:]
            elif nxt.startswith("B-"):
                spans.append((i, i, tag[2:]))
                start, end, kind = i, i, tag[2:]
            elif nxt.startswith("O"):
                spans.append((i, i, tag[2:]))
                start = end = kind = None
        elif tag.startswith("I-"):
            if nxt.startswith("B-"):
                end = i
                if start is not None:
                    spans.append((start, end, kind))
                start, kind = i, tag[2:]
            elif nxt.startswith("O"):
                end = i
                if start is not None:
                    spans.append((start, end, kind))
                start = end = kind = None
    if start is not None and end is None:
        spans.append((start, len(tokens) - 2, kind))
    return spans


def _directed(ref_vectors, pred_vectors, ref_types: list[str], pred_types: list[str]) -> float:
    """Each reference entity's best cosine match among the candidate's, weighted by type affinity."""
    import torch.nn.functional as F

    similarity = F.normalize(ref_vectors, dim=1) @ F.normalize(pred_vectors, dim=1).T
    best, index = similarity.max(dim=1)
    total = weights = 0.0
    for value, j, ref_type in zip(best.tolist(), index.tolist(), ref_types):
        pair = (ref_type, pred_types[j])
        weight = AFFINITY[pair]
        total += value * weight * (NEGATION_WEIGHT if pair in _NEGATED else 1.0)
        weights += weight
    return total / weights if weights else 0.0


class RaTEScorer:
    def __init__(self, path: str | Path, batch_size: int = 16):
        folder = require_folder("--ratescore", path, HOLDS, ("ner", "encoder"))
        self.ner_dir = require_hf_model("--ratescore", folder / "ner", HOLDS)
        self.encoder_dir = require_hf_model("--ratescore", folder / "encoder", HOLDS)
        self.weights = {"ner": fingerprint(self.ner_dir), "encoder": fingerprint(self.encoder_dir)}
        self.batch_size = batch_size
        import torch
        from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        with offline():
            self.tokenizer = AutoTokenizer.from_pretrained(self.ner_dir)
            self.ner = AutoModelForTokenClassification.from_pretrained(self.ner_dir).eval().to(self.device)
            self.encoder_tokenizer = AutoTokenizer.from_pretrained(self.encoder_dir)
            self.encoder = AutoModel.from_pretrained(self.encoder_dir).eval().to(self.device)
        tags = set(self.ner.config.id2label.values())
        unknown = {t[2:] for t in tags if t != "O"} - set(_TYPES)
        if unknown:
            raise R2GError(f"--ratescore {self.ner_dir}: its labels name entity types {sorted(unknown)}; RaTEScore's "
                           f"are {', '.join(_TYPES)} (B-/I- tags and O)")

    def entities(self, reports: list[str]) -> list[list[tuple[str, str]]]:
        """(entity text, type) of every report, sentence by sentence."""
        import torch

        sentences, owner = [], []
        for r, text in enumerate(reports):
            for sentence in split_sentences(text):
                sentences.append(sentence)
                owner.append(r)
        found: list[list[tuple[str, str]]] = [[] for _ in reports]
        labels = self.ner.config.id2label
        for start in range(0, len(sentences), self.batch_size):
            batch = self.tokenizer(sentences[start:start + self.batch_size], max_length=512, padding=True,
                                   truncation=True, return_tensors="pt")
            with torch.no_grad():
                tags = self.ner(**batch.to(self.device)).logits.argmax(-1).tolist()
            for row, (ids, mask) in enumerate(zip(batch["input_ids"], batch["attention_mask"])):
                tokens = self.tokenizer.convert_ids_to_tokens(ids[:int(mask.sum())].tolist())  # right padding
                row_tags = [labels[t] for t in tags[row]]
                found[owner[start + row]] += [(self.tokenizer.convert_tokens_to_string(tokens[a:b + 1]), kind)
                                              for a, b, kind in _spans(tokens, row_tags)]
        return found

    def _embed(self, entities: list[tuple[str, str]]):
        import torch

        batch = self.encoder_tokenizer([e for e, _ in entities], truncation=True, padding=True, max_length=30,
                                       return_tensors="pt").to(self.device)
        with torch.no_grad():
            return self.encoder(**batch).last_hidden_state[:, 0].float().cpu()

    def score(self, refs: list[str], preds: list[str]) -> list[float]:
        scores = []
        for ref, pred in zip(self.entities(refs), self.entities(preds)):
            if not ref or not pred:
                scores.append(EMPTY_SCORE)
                continue
            ref_vectors, pred_vectors = self._embed(ref), self._embed(pred)
            ref_types, pred_types = [t for _, t in ref], [t for _, t in pred]
            precision = _directed(ref_vectors, pred_vectors, ref_types, pred_types)
            recall = _directed(pred_vectors, ref_vectors, pred_types, ref_types)
            scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        return scores
