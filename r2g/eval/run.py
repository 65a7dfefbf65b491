"""The evaluation recipe: run folder + shards → predictions.jsonl, metrics.json, report.md / report.html.

`prepare` checks every input without loading a model; `evaluate` then loads it (r2g.eval.reconstitute),
generates, scores and writes the files.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2g.data.loader import SplitShards, make_loader, split_shards, study_images
from r2g.eval.decode import decode, per_rank_limit
from r2g.eval.reconstitute import (RunFolder, load_run, open_run, partitioned_inference_config,
                                   tensor_parallel_inference_check)
from r2g.metrics.model_based import ModelMetrics, check_folders


@dataclass(frozen=True)
class EvalOptions:
    """How `evaluate` runs: each field is the `r2g eval` flag of the same name, except `generate`, which holds
    the generation flags given (--num-beams, --max-new-tokens, ...)."""

    split: str = "test"
    out: str | Path | None = None  # output folder; None = RUN/eval-SPLIT
    # Base paths; None = the ones the run recorded.
    shards: str | None = None
    llm: str | None = None
    vision_weights: str | None = None
    checkpoint: str | None = None  # a DeepSpeed checkpoint tag or "latest"; None = trainable.safetensors
    allow_llm_mismatch: bool = False
    generate: dict[str, Any] = field(default_factory=dict)  # GenerateConfig fields that replace the run's
    meteor: bool = True
    labeler: str = "rules"
    labeler_weights: str | None = None
    models: ModelMetrics = ModelMetrics()  # model-based metrics, each from a local folder
    truncated_refs: bool = False
    max_samples: int = 0  # 0 = the whole split
    bootstrap: int = 1000  # resamples of the studies for each metric's interval; 0 = none
    workers: int = 2
    ds: str | None = None  # a ZeRO-3 config: the model partitioned across the ranks; None = each rank holds it whole
    tp: int = 1  # ranks the LLM's layers are split over (tensor parallel, = the launch's processes); 1 = not split


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


@dataclass(frozen=True)
class EvalPlan:
    """An evaluation whose inputs all checked out (`prepare`): what `evaluate` runs."""

    run: RunFolder  # base paths resolved, overrides applied
    opts: EvalOptions
    shards: SplitShards  # the split, checked strictly: a score must cover the whole split
    studies: int  # studies to decode (all ranks together)
    label: Callable[[list[str]], list[dict]]  # the labeler, loaded (and so checked) before the model
    ds: dict | None = None  # the ZeRO-3 config (opts.ds), read and checked


def prepare(run: str | Path, opts: EvalOptions = EvalOptions()) -> EvalPlan:
    """Check every input (run folder, base LLM, vision and trained weights, shards and split, labeler) without
    loading a model, so that a bad one fails in a second rather than after the model loads."""
    from r2g.metrics.bootstrap import check_resamples
    from r2g.metrics.chexpert import load_labeler

    folder = open_run(run, opts.llm, opts.vision_weights, opts.shards, opts.checkpoint, opts.allow_llm_mismatch)
    checked = split_shards(folder.cfg.data.shards, opts.split)
    # The labeler runs only after generation, but loading is what checks it (CheXbert's pickle, its weights):
    # load it now, once, and score with this one.
    label = load_labeler(opts.labeler, opts.labeler_weights)
    check_resamples(opts.bootstrap)
    check_folders(opts.models)
    tensor_parallel_inference_check(folder, opts.tp, opts.ds)
    ds = partitioned_inference_config(folder, opts.ds) if opts.ds else None
    total = checked.samples
    return EvalPlan(folder, opts, checked, min(total, opts.max_samples) if opts.max_samples else total, label, ds)


def evaluate(plan: EvalPlan, on_batch: Callable[[int], None] | None = None) -> dict:
    """Generate for the plan's split, score, write the files; returns the metrics (on rank 0; {} on other ranks)."""
    from r2g.eval.curves import training_curves
    from r2g.eval.report import REFERENCES_FULL, REFERENCES_TRUNCATED, pick_examples, write_report
    from r2g.metrics.score import score

    folder, opts, run = plan.run, plan.opts, plan.run.path
    # Launched by deepspeed / torchrun: split the set across ranks. `loaded` lives until the end (ZeRO-3's engine).
    # With --tp every rank decodes every study (the ranks compute each forward pass together); otherwise the ranks
    # split the studies.
    loaded = load_run(folder, plan.ds, opts.generate, distributed="RANK" in os.environ, tp=opts.tp)
    model, precision, gen, device = loaded.model, loaded.precision, loaded.generate, loaded.device
    data_rank, data_world = loaded.data_ranks
    cfg, shards, split = folder.cfg, folder.cfg.data.shards, opts.split
    held, total = loaded.llm_weights_held()
    # plan.shards was checked strictly: a score must cover the whole split
    loader, _ = make_loader(plan.shards, dataclasses.replace(cfg.data, workers=opts.workers), batch_size=gen.batch_size,
                            train=False, rank=data_rank, world=data_world)
    per_rank = per_rank_limit(opts.max_samples, data_world)
    with precision.autocast(device):  # decode in the precision the run trained in
        rows = decode(model, loader, gen, device, precision.input_dtype, max_samples=per_rank,
                      distributed=data_world > 1, synced=loaded.synced, on_batch=on_batch)
    if loaded.rank != 0:
        return {}

    out = Path(opts.out) if opts.out else run / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    preds = {r["id"]: r["prediction"] for r in rows}
    refs = {r["id"]: r["reference"] for r in rows}
    if opts.truncated_refs:
        ids = list(refs)
        refs = dict(zip(ids, truncate_like_reference([refs[k] for k in ids], model.tokenizer, cfg.model.max_report_tokens)))
    metrics = score(refs, preds, meteor=opts.meteor, labeler=plan.label, per_report_labels=True,
                    bootstrap=opts.bootstrap, models=opts.models)
    labels = metrics.pop("labels")
    rouge = per_report_rouge(refs, preds)
    metrics.update(
        split=split, studies=len(rows), references=REFERENCES_TRUNCATED if opts.truncated_refs else REFERENCES_FULL,
        labeler=opts.labeler, generate=dataclasses.asdict(gen), run=str(run), shards=str(shards),
        weights=opts.checkpoint or "trainable.safetensors",
        # How the model was held: a partitioned LLM must not change any number, and this says it was.
        inference={"ranks": loaded.world, "ds": opts.ds, "tp": opts.tp, "llm_weights_held_rank0": held,
                   "llm_weights_total": total},
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
    thumbnails = study_images(plan.shards, shown)  # only the examples the report shows
    paths = write_report(out, report_rows, metrics, thumbnails, title=f"r2g evaluation: {run.name} on {split}",
                         curves=training_curves(run / "metrics.jsonl"))
    metrics["files"] = {"predictions": str(out / "predictions.jsonl"), "metrics": str(out / "metrics.json"),
                        **{k: str(v) for k, v in paths.items()}}
    return metrics

