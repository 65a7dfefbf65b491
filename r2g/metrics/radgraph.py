"""RadGraph F1 through the `radgraph` package (Delbrouck et al.; pip install r2g[metrics]), from a local folder.

The package's `F1RadGraph(reward_level="all")` gives three per-report F1 scores, averaged over reports:
- `radgraph_simple`: entities (tokens, label) — RG_E;
- `radgraph_partial`: entities, each also marked by whether it has a relation — RG_ER;
- `radgraph_complete`: entities without relations plus every (entity, relation, target) triple — the "bar"
  variant (RG_ER-bar).
A pair where either report is empty scores 0 on all three, as in the package.

`--radgraph DIR`: the unpacked model archive, in a folder named after its model type (radgraph, radgraph-xl,
modern-radgraph-xl, echograph: the package picks its tokenization by that name), holding config.json,
vocabulary/ and weights.th. The BERT that config.json names (model.embedder.token_embedders.bert.model_name and
dataset_reader.token_indexers.bert.model_name) must load offline: a local folder path there, or a copy already in
the Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from r2g.errors import R2GError
from r2g.metrics.local_weights import fingerprint, offline, require_folder, tokenizer_v4_methods

MODEL_TYPES = ("radgraph", "radgraph-xl", "modern-radgraph-xl", "echograph")
VARIANTS = ("simple", "partial", "complete")
HOLDS = ("the unpacked RadGraph model (config.json, vocabulary/, weights.th), in a folder named after its "
         f"model type ({', '.join(MODEL_TYPES)})")


def check_folder(path: str | Path) -> Path:
    folder = require_folder("--radgraph", path, HOLDS, ("config.json", "vocabulary", "weights.th"))
    if folder.resolve().name not in MODEL_TYPES:
        raise R2GError(f"--radgraph {folder}: name the folder after its model type ({', '.join(MODEL_TYPES)}), "
                       "as the radgraph package unpacks it: the package tokenizes reports by that name")
    try:
        json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise R2GError(f"--radgraph {folder}: config.json is not valid JSON ({e})") from None
    return folder


def _import_package():
    try:
        tokenizer_v4_methods()
        from radgraph import F1RadGraph
    except ImportError as e:
        raise R2GError(f"--radgraph needs the radgraph package: pip install 'r2g[metrics]' ({e})") from None
    return F1RadGraph


class RadGraphScorer:
    """Loads the model once; `score(refs, preds)` -> per-report F1 of each variant, and the annotations."""

    def __init__(self, path: str | Path):
        self.folder = check_folder(path)
        F1RadGraph = _import_package()
        self.weights = fingerprint(self.folder)
        try:
            # The package picks the first GPU when there is one; it prints "Using device: ...".
            with offline(), contextlib.redirect_stdout(io.StringIO()):
                self._f1 = F1RadGraph(reward_level="all", model_type=self.folder.resolve().name,
                                      model_cache_dir=str(self.folder.resolve().parent))
        except (OSError, ValueError) as e:
            raise R2GError(f"--radgraph {self.folder}: the BERT that config.json names could not be loaded offline "
                           f"({str(e).splitlines()[0]}); write its local folder path into config.json's "
                           "model.embedder.token_embedders.bert.model_name and dataset_reader.token_indexers.bert."
                           "model_name") from None
        except RuntimeError as e:
            raise R2GError(f"--radgraph {self.folder}: weights.th does not fit config.json "
                           f"({str(e).splitlines()[0]})") from None

    def score(self, refs: list[str], preds: list[str]) -> dict:
        """{"per_report": {variant: [F1 per report]}, "annotations": [(pred, ref) annotation or None per report]}."""
        with offline(), contextlib.redirect_stdout(io.StringIO()):
            _, rewards, pred_annotations, ref_annotations = self._f1(refs=refs, hyps=preds)
        per_report = {variant: [float(x) for x in values] for variant, values in zip(VARIANTS, rewards)}
        # The package leaves out the pairs with an empty report; put them back as None, in report order.
        pairs = iter(zip(pred_annotations, ref_annotations))
        annotations = [None if not p or not r else next(pairs) for p, r in zip(preds, refs)]
        return {"per_report": per_report, "annotations": annotations}


def entity_relation_f1(pred: dict | None, ref: dict | None) -> float:
    """RadCliQ's `radgraph_combined` for one report pair: the mean of the entity F1 and the relation F1 over
    sets of (tokens, label) entities and (entity, relation, entity) triples (rajpurkarlab/CXR-Report-Metric),
    here read from the radgraph package's annotations. An empty set on both sides scores 0."""
    if pred is None or ref is None:
        return 0.0

    def entities(annotation):
        return {(e["tokens"], e["label"]) for e in annotation["entities"].values()}

    def relations(annotation):
        found = annotation["entities"]
        return {((e["tokens"], e["label"]), (found[target]["tokens"], found[target]["label"]), kind)
                for e in found.values() for kind, target in e["relations"] if target in found}

    def f1(gold: set, guess: set) -> float:
        hit = len(gold & guess)
        return 2 * hit / (len(gold) + len(guess)) if hit else 0.0

    return (f1(entities(ref), entities(pred)) + f1(relations(ref), relations(pred))) / 2
