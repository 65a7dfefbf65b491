"""Validation during training: decode a val subset on all ranks, score it once, agree on the result.

The reference implementation scores each rank's shard of the val set on its own; here predictions are
gathered first, so the selection metric is computed on the whole subset whatever the world size.
"""

from __future__ import annotations

import torch

from r2g.config import RunConfig
from r2g.dist import fail_together
from r2g.errors import R2GError
from r2g.eval.decode import decode, per_rank_limit
from r2g.metrics.keys import HEADLINE

SELECT_METRICS = {
    "bleu4_cider": "0.5 * BLEU-4 + 0.5 * CIDEr (the reference implementation's choice)",
    "ce_f1": "CheXpert micro F1 over the 14 labels",
}
SCORE_KEYS = tuple(HEADLINE)


def check_select_metric(name: str) -> None:
    if name not in SELECT_METRICS and name not in SCORE_KEYS:
        raise R2GError(f"--select-metric '{name}' is unknown; choose one of {', '.join([*SELECT_METRICS, *SCORE_KEYS])}")


def selection_value(scores: dict, name: str) -> float:
    if name == "bleu4_cider":
        return 0.5 * scores["BLEU_4"] + 0.5 * scores["CIDEr"]
    if name == "ce_f1":
        return scores["ce_micro_f1"]
    return scores[name]


def validate(model, loader, cfg: RunConfig, device, dtype, n_studies: int, rank: int, world: int,
             synced: bool) -> tuple[dict, list[dict]]:
    """(scores, rows) on every rank for the first `n_studies` val studies (0 = all); rows are {id, prediction,
    reference}."""
    from r2g.metrics.score import score

    per_rank = per_rank_limit(n_studies, world)
    was_training = model.training
    model.eval()
    rows = decode(model, loader, cfg.generate, device, dtype, max_samples=per_rank, distributed=world > 1, synced=synced)
    model.train(was_training)
    scores = None
    with fail_together():  # a scoring failure on rank 0 stops the ranks that wait for its result too
        if rank == 0:  # one JVM for METEOR, one labeler pass; everyone else waits for the result
            refs = {r["id"]: r["reference"] for r in rows}
            preds = {r["id"]: r["prediction"] for r in rows}
            scores = {k: v for k, v in score(refs, preds).items() if isinstance(v, (int, float))}
    box = [scores]
    if world > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0], rows
