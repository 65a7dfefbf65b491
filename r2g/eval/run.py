"""The evaluation recipe: run folder + shards → predictions.jsonl, metrics.json, report.md / report.html.

Numbers are computed the way the literature computes them: beam search with the reference generation
settings, R2Gen-cleaned strings scored by pycocoevalcap without the PTB tokenizer, against the FULL cleaned
references. (The reference implementation scores against references truncated to the LLM's token budget,
which inflates its numbers; that is available only as the explicitly named `truncated_refs` option.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from r2g.config import GenerateConfig, replace
from r2g.data.loader import make_loader, study_images
from r2g.dist import auto_dtype
from r2g.eval.decode import decode, per_rank_limit
from r2g.eval.reconstitute import reconstitute
from r2g.errors import R2GError


def truncate_like_reference(texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """References cut to the first `max_tokens` tokens, as the reference implementation scores them."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(row[:max_tokens], skip_special_tokens=True).strip() for row in ids]


def per_report_rouge(refs: dict[str, str], preds: dict[str, str]) -> dict[str, float]:
    """ROUGE-L of each report: the ranking used to pick best and worst examples."""
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(refs)
    _, scores = Rouge().compute_score({k: [refs[k]] for k in ids}, {k: [preds[k]] for k in ids})
    return {k: float(s) for k, s in zip(ids, scores)}


def evaluate(
    run: str | Path,
    shards: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    llm: str | None = None,
    checkpoint: str | None = None,
    gen_overrides: dict | None = None,
    meteor: bool = True,
    labeler: str = "rules",
    labeler_weights: str | None = None,
    truncated_refs: bool = False,
    allow_llm_mismatch: bool = False,
    max_samples: int = 0,
    workers: int = 2,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Generate for `split`, score, write the files; returns the metrics (on rank 0; {} on other ranks)."""
    from r2g.eval.report import pick_examples, write_report
    from r2g.metrics.score import score

    distributed = "RANK" in os.environ  # launched by deepspeed / torchrun: split the set across ranks
    if distributed:
        from r2g.dist import init_distributed

        rank, world, device = init_distributed()
    else:
        rank, world = 0, 1
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = auto_dtype(device)

    model, cfg = reconstitute(run, llm, checkpoint, dtype, allow_llm_mismatch)
    model.to(device)
    gen: GenerateConfig = replace(cfg.generate, **(gen_overrides or {}))
    data = dataclasses.replace(cfg.data, shards=str(shards), skip_damaged_shards=False)  # a score covers the whole split
    loader, _, n = make_loader(shards, split, data, gen.batch_size, train=False, rank=rank, world=world, workers=workers)
    per_rank = per_rank_limit(max_samples, world)
    rows = decode(model, loader, gen, device, dtype, max_samples=per_rank, distributed=world > 1, on_batch=on_batch)
    if rank != 0:
        return {}
    expected = min(n, max_samples) if max_samples else n
    if len(rows) < expected:
        raise R2GError(f"{shards}: decoded {len(rows)} of the {expected} '{split}' studies in manifest.json, and "
                       f"a score must cover them all; run `r2g shard verify {shards}` and re-shard what it names")

    out = Path(out) if out else Path(run) / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    preds = {r["id"]: r["prediction"] for r in rows}
    refs = {r["id"]: r["reference"] for r in rows}
    if truncated_refs:
        ids = list(refs)
        refs = dict(zip(ids, truncate_like_reference([refs[k] for k in ids], model.tokenizer, cfg.model.max_report_tokens)))
    metrics = score(refs, preds, meteor=meteor, labeler=labeler, labeler_weights=labeler_weights, per_report_labels=True)
    labels = metrics.pop("labels")
    rouge = per_report_rouge(refs, preds)
    metrics.update(
        split=split, studies=len(rows), references="truncated to the token budget (reference-implementation compatibility)"
        if truncated_refs else "full cleaned reports", labeler=labeler, generate=dataclasses.asdict(gen), run=str(run),
        weights=checkpoint or "trainable.safetensors",
    )

    with open(out / "predictions.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({**r, "reference": refs[r["id"]], "labels_reference": labels[r["id"]]["reference"],
                                "labels_prediction": labels[r["id"]]["prediction"]}) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report_rows = [
        {"id": k, "prediction": preds[k], "reference": refs[k], "score": rouge[k],
         "labels_pred": labels[k]["prediction"], "labels_ref": labels[k]["reference"]}
        for k in refs
    ]
    shown = {row["id"] for _, _, section in pick_examples(report_rows, n=5, seed=0) for row in section}
    thumbnails = study_images(shards, split, shown)  # only the examples the report shows
    paths = write_report(out, report_rows, metrics, thumbnails, title=f"r2g evaluation: {Path(run).name} on {split}")
    metrics["files"] = {"predictions": str(out / "predictions.jsonl"), "metrics": str(out / "metrics.json"),
                        **{k: str(v) for k, v in paths.items()}}
    return metrics

