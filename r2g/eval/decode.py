"""Batched report generation over a loader, split across ranks and gathered back in order.

Under ZeRO-3 every forward pass gathers partitioned weights collectively, so every rank must run the same
number of generate calls: ranks with fewer batches repeat their last batch and drop its output, and
generation uses `synced_gpus` so a rank whose beams finished early keeps stepping with the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from r2g.config import GenerateConfig
from r2g.errors import R2GError


def per_rank_limit(total: int, world: int) -> int:
    """Studies each of `world` ranks decodes so that together they cover `total` (0 = no limit): ranks read
    every world-th study, so each takes ceil(total / world) (the last ranks may
    add up to world - 1 studies beyond `total`)."""
    return -(-total // world) if total else 0


def _limited(batches: Iterable[dict], max_samples: int):
    """The batches, the last one cut so that together they hold at most `max_samples` studies (0 = no limit)."""
    n_studies = 0
    for batch in batches:
        if max_samples and n_studies >= max_samples:
            return
        if max_samples and n_studies + len(batch["ids"]) > max_samples:
            keep = max_samples - n_studies
            batch = {k: v[:keep] for k, v in batch.items()}
        n_studies += len(batch["ids"])
        yield batch


def decode(
    model,
    batches: Iterable[dict],
    gen: GenerateConfig,
    device: torch.device,
    dtype: torch.dtype,
    max_samples: int = 0,
    distributed: bool = False,
    synced: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict]:
    """[{id, prediction, reference}] for this rank's batches (all ranks' rows, in id order, if `distributed`).
    Batches are decoded as they arrive: a rank holds one batch of images at a time, not its whole share.

    `distributed`: the ranks step through their batches together, so that a rank whose next batch fails to load
    (a sample that does not decode) or that gets none stops every rank with the same error, and no rank is left
    waiting in a collective: two small all-reduces per batch."""
    from r2g.dist import all_max, fail_together, gather_objects, raise_together

    stream = _limited(batches, max_samples)

    def next_batch() -> dict | None:
        with fail_together(distributed):
            return next(stream, None)

    batch = next_batch()
    if distributed:
        raise_together(R2GError("a rank got no studies to decode: the split has fewer studies than ranks; use fewer "
                                "processes") if batch is None else None)
    rows: list[dict] = []
    last = None
    while True:
        if distributed:  # all go on while any rank has a batch left
            if not all_max(int(batch is not None)):
                break
        elif batch is None:
            break
        own = batch is not None
        last = batch if own else last
        if own or synced:  # under ZeRO-3 every rank runs every forward: one that is done repeats its last batch
            preds = model.generate(last["images"].to(device, dtype), last["view_mask"], gen, synced_gpus=synced)
        if own:
            rows += [{"id": i_, "prediction": p, "reference": r} for i_, p, r in zip(batch["ids"], preds, batch["reports"])]
            if on_batch:
                on_batch(len(preds))
        batch = next_batch()  # on every rank each round when distributed: it holds a collective
    if distributed:
        rows = [row for part in gather_objects(rows) for row in part]
    return sorted(rows, key=lambda r: r["id"])
