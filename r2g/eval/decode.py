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

    `distributed`: a rank whose batches fail to load (a sample that does not decode) or that gets none stops
    every rank with the same error, before any of them enters a collective."""
    from r2g.dist import all_max, fail_together

    local, n_studies = [], 0
    with fail_together(distributed):
        for batch in batches:
            if max_samples and n_studies >= max_samples:
                break
            if max_samples and n_studies + len(batch["ids"]) > max_samples:  # cut the last batch to the limit
                keep = max_samples - n_studies
                batch = {k: v[:keep] for k, v in batch.items()}
            local.append(batch)
            n_studies += len(batch["ids"])
        if distributed and not local:
            raise R2GError("a rank got no studies to decode: the split has fewer studies than ranks; use fewer processes")
    rows: list[dict] = []
    n_batches = all_max(len(local)) if distributed else len(local)
    for i in range(n_batches):
        batch = local[min(i, len(local) - 1)]
        images = batch["images"].to(device, dtype)
        preds = model.generate(images, batch["view_mask"].to(device), gen, synced_gpus=synced)
        if i < len(local):
            rows += [{"id": i_, "prediction": p, "reference": r} for i_, p, r in zip(batch["ids"], preds, batch["reports"])]
            if on_batch:
                on_batch(len(preds))
    if distributed:
        from r2g.dist import gather_objects

        rows = [row for part in gather_objects(rows) for row in part]
    return sorted(rows, key=lambda r: r["id"])
