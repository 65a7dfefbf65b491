"""The `r2g` command: parses flags, builds a config, calls one library function per command, prints.

Errors a user can fix (R2GError) print as one red line and exit 2, never as a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from r2g.errors import R2GError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Chest X-ray report generation with a frozen LLM.")
shard_app = typer.Typer(no_args_is_help=True, help="Write WebDataset shards from annotation.json + images.")
app.add_typer(shard_app, name="shard")
console = Console()


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    )


# ---------------------------------------------------------------------------------------------- synth
@app.command()
def synth(
    out: Path = typer.Option(Path("data/synth"), help="Output folder (annotation.json + images/)."),
    studies: int = typer.Option(1000, help="Number of studies."),
    style: str = typer.Option("mimic", help="mimic (1 frontal view) or iu-xray (frontal + lateral)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical output."),
    image_size: int = typer.Option(256, help="Image side in pixels."),
    workers: int = typer.Option(2, help="Worker processes."),
):
    """Generate a synthetic chest X-ray dataset in the R2Gen raw layout (with CheXpert ground truth)."""
    from r2g.demo.dataset import generate

    summary = generate(out, studies=studies, style=style, seed=seed, image_size=image_size, workers=workers)
    console.print(f"[green]wrote[/] {out}/annotation.json and images: {summary}")


# ---------------------------------------------------------------------------------------------- shard
def _shard(dataset: str, annotation: Path, images: Path, out: Path, max_side, shard_size, workers, skip_bad):
    from r2g.data.annotation import load_annotation
    from r2g.data.shard import ShardOptions, shard_dataset

    opts = ShardOptions(dataset=dataset, max_side=max_side, shard_size=shard_size, skip_bad=skip_bad)
    total = sum(len(v) for v in load_annotation(annotation).studies.values())
    with progress_bar() as bar:
        task = bar.add_task(f"sharding {dataset}", total=total)
        manifest = shard_dataset(
            annotation, images, out, opts, workers=workers,
            on_shard=lambda r: bar.advance(task, r.samples + len(r.bad)),
        )
    table = Table(title=f"{out}/manifest.json")
    for col in ("split", "samples", "shards"):
        table.add_column(col)
    for split, v in manifest["splits"].items():
        table.add_row(split, str(v["samples"]), str(len(v["shards"])))
    console.print(table)
    if manifest["reused_shards"]:
        console.print(f"resumed: {manifest['reused_shards']} shard(s) already written and verified")
    if manifest["bad"]["count"]:
        console.print(f"[yellow]skipped {manifest['bad']['count']} bad sample(s)[/]: {manifest['bad']['by_reason']} (listed in manifest.json)")
    return manifest


def _shard_command(dataset: str, default_out: str):
    def command(
        annotation: Path = typer.Option(..., help="R2Gen-format annotation.json."),
        images: Path = typer.Option(..., help="Folder the annotation's image_path entries are relative to."),
        out: Path = typer.Option(Path(default_out), help="Output folder for the tars and manifest.json."),
        max_side: Optional[int] = typer.Option(None, help="Shrink images whose longer side exceeds this (re-encodes)."),
        shard_size: int = typer.Option(1000, help="Studies per shard."),
        workers: int = typer.Option(2, help="Worker processes."),
        skip_bad: bool = typer.Option(False, help="Skip bad samples (counted, listed in the manifest) instead of stopping."),
    ):
        _shard(dataset, annotation, images, out, max_side, shard_size, workers, skip_bad)

    command.__doc__ = f"Shard {dataset} (annotation.json + images) into WebDataset tars."
    return command


shard_app.command("iu-xray")(_shard_command("iu_xray", "shards/iu_xray"))
shard_app.command("mimic")(_shard_command("mimic_cxr", "shards/mimic_cxr"))


@shard_app.command("verify")
def shard_verify(shards: Path = typer.Argument(..., help="Shard folder written by `r2g shard`.")):
    """Check every shard against manifest.json: full sha256 and sample count (exit 2 naming the bad ones)."""
    from r2g.data.shard import read_manifest, verify_shards

    total = sum(len(v["shards"]) for v in read_manifest(shards)["splits"].values())
    with progress_bar() as bar:
        task = bar.add_task("verifying", total=total)
        checks = verify_shards(shards, on_shard=lambda _: bar.advance(task))
    table = Table(title=f"{shards}/manifest.json")
    for col in ("shard", "split", "samples", "read", "sha256", "status"):
        table.add_column(col, justify="right" if col in ("samples", "read") else "left")
    for c in checks:
        table.add_row(c.name, c.split, str(c.samples), "-" if c.read is None else str(c.read),
                      "ok" if c.checksum_ok else "differs", "[green]ok[/]" if c.ok else f"[red]{c.problem()}[/]")
    console.print(table)
    bad = [c for c in checks if not c.ok]
    if bad:
        listed = ", ".join(f"{c.name} ({c.problem()})" for c in bad)
        raise R2GError(f"{len(bad)} of {len(checks)} shard(s) damaged: {listed}; re-run the `r2g shard` command "
                       "that wrote them (it rewrites exactly the shards that no longer verify)")
    console.print(f"[green]all {len(checks)} shard(s) verify[/]")


# ---------------------------------------------------------------------------------------------- tiny-lm
@app.command("tiny-lm")
def tiny_lm(
    corpus: Path = typer.Option(..., help="annotation.json (its train reports) or a text file, one report per line."),
    out: Path = typer.Option(Path("models/tiny-lm"), help="Output folder (save_pretrained layout)."),
    steps: int = typer.Option(300, help="Optimizer steps."),
    hidden: int = typer.Option(256), layers: int = typer.Option(4), heads: int = typer.Option(4),
    vocab_size: int = typer.Option(2000), seed: int = typer.Option(0),
    finding_notes: int = typer.Option(
        0, help="Train on the reports laid out as R2GenGPT prompts, with a note of their findings in this many "
                "visual slots (the encoder's visual-token count, 16 for the demo Swin), so that the frozen LM "
                "reads what the mapper writes there (see r2g.demo.run); 0 = plain reports."),
):
    """Train a small Llama-architecture LM + BPE tokenizer on report text, for demos on CPU."""
    from r2g.config import PROMPT
    from r2g.demo.tiny_lm import train_tiny_lm

    texts = _read_corpus(corpus)
    if finding_notes:
        from r2g.demo.run import prompt_corpus

        texts, _ = prompt_corpus(texts, finding_notes, PROMPT, seed)
    result = train_tiny_lm(texts, out, vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads,
                           steps=steps, seed=seed, log=console.print)
    console.print(f"[green]saved[/] {out}: {result['params']:,} params, held-out perplexity "
                  f"{result['ppl_init']:.1f} → {result['ppl_final']:.1f} in {result['seconds']:.0f} s")


def _read_corpus(path: Path) -> list[str]:
    if not path.is_file():
        raise R2GError(f"{path}: corpus not found")
    if path.suffix == ".json":
        from r2g.data.annotation import load_annotation

        texts = [s.report for s in load_annotation(path).studies.get("train", [])]
    else:
        texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise R2GError(f"{path}: no report text found (expected train reports in annotation.json, or lines)")
    return texts


# ---------------------------------------------------------------------------------------------- train
def train_config(
    llm: str, shards: str, out: str, ds: str, mode: str, resume: bool, epochs, max_steps, lr, micro_batch,
    grad_accum, warmup_steps, precision, seed, save_every, val_every, val_samples, select_metric, workers,
    vision_arch, vision_weights, vision_kwargs, view_merge, lora_r, lora_alpha, lora_dropout, llm_lora,
    max_report_tokens, augment, num_beams, min_new_tokens, max_new_tokens, log_every, image_size, blank_images,
):
    """Flags → RunConfig. Dataset defaults (token budget, epochs, lengths) come from the shards' manifest."""
    import json

    from r2g.config import DataConfig, GenerateConfig, ModelConfig, RunConfig, TrainConfig, preset, replace
    from r2g.data.shard import read_manifest

    dataset = read_manifest(shards)["dataset"]
    p = preset(dataset)
    try:
        kwargs = json.loads(vision_kwargs) if vision_kwargs else {}
    except json.JSONDecodeError as e:
        raise R2GError(f"--vision-kwargs must be a JSON object, e.g. '{{\"embed_dim\": 32}}' ({e})") from None
    return RunConfig(
        data=replace(DataConfig(shards=shards, dataset=dataset), workers=workers, augment=augment, image_size=image_size,
                     blank_images=blank_images),
        model=replace(
            ModelConfig(llm=llm, mode=mode, max_report_tokens=p["max_report_tokens"], vision_kwargs=kwargs),
            vision_arch=vision_arch, vision_weights=vision_weights, view_merge=view_merge, lora_r=lora_r,
            lora_alpha=lora_alpha, lora_dropout=lora_dropout, llm_lora=llm_lora, max_report_tokens=max_report_tokens,
        ),
        train=replace(
            TrainConfig(out=out, ds_config=ds, epochs=p["epochs"], resume=resume),
            epochs=epochs, max_steps=max_steps, lr=lr, micro_batch=micro_batch, grad_accum=grad_accum,
            warmup_steps=warmup_steps, precision=precision, seed=seed, save_every=save_every, val_every=val_every,
            val_samples=val_samples, select_metric=select_metric, log_every=log_every,
        ),
        generate=replace(
            GenerateConfig(min_new_tokens=p["min_new_tokens"], max_new_tokens=p["max_new_tokens"]),
            num_beams=num_beams, min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens,
        ),
    )


@app.command()
def train(
    llm: str = typer.Option(..., help="Local Hugging Face causal-LM folder (e.g. /models/Llama-2-7b-chat-hf)."),
    shards: str = typer.Option(..., help="Shard folder written by `r2g shard`."),
    out: str = typer.Option("runs/r2g", help="Run folder (checkpoints, trainable.safetensors, logs)."),
    ds: str = typer.Option("ds_configs/zero2.json", help="DeepSpeed config; its \"auto\" values come from these flags."),
    mode: str = typer.Option("delta", help="shallow (mapper), delta (mapper + Swin q/v LoRA) or deep (mapper + Swin)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    epochs: Optional[int] = typer.Option(None, help="Default: 3 for MIMIC-CXR, 15 for IU-Xray."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [1e-4]."),
    micro_batch: Optional[int] = typer.Option(None, help="Studies per GPU per step [6]."),
    grad_accum: Optional[int] = typer.Option(None),
    warmup_steps: Optional[int] = typer.Option(None),
    precision: Optional[str] = typer.Option(None, help="auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32."),
    seed: Optional[int] = typer.Option(None),
    save_every: Optional[int] = typer.Option(None, help="Steps between resumable checkpoints [500]."),
    val_every: Optional[int] = typer.Option(None, help="Steps between validations (0 = each epoch)."),
    val_samples: Optional[int] = typer.Option(None, help="Val studies decoded per validation (0 = all, -1 = no validation)."),
    select_metric: Optional[str] = typer.Option(None, help="bleu4_cider (reference), ce_f1, or a metric key."),
    workers: Optional[int] = typer.Option(None, help="Data-loader workers per rank."),
    vision_arch: Optional[str] = typer.Option(None, help="timm model name [swin_base_patch4_window7_224]."),
    vision_weights: Optional[str] = typer.Option(None, help="Local Swin weights (timm or HF safetensors layout)."),
    vision_kwargs: Optional[str] = typer.Option(None, help="JSON overrides for timm.create_model (small encoders)."),
    view_merge: Optional[str] = typer.Option(None, help="mean (reference) or concat: how a study's views combine."),
    lora_r: Optional[int] = typer.Option(None), lora_alpha: Optional[int] = typer.Option(None),
    lora_dropout: Optional[float] = typer.Option(None),
    llm_lora: Optional[bool] = typer.Option(None, "--llm-lora", help="Also train LoRA on the LLM's attention."),
    max_report_tokens: Optional[int] = typer.Option(None, help="Report token budget, eos included [100 MIMIC, 60 IU]."),
    augment: Optional[bool] = typer.Option(None, "--augment", help="Light train-time image augmentation."),
    num_beams: Optional[int] = typer.Option(None), min_new_tokens: Optional[int] = typer.Option(None),
    max_new_tokens: Optional[int] = typer.Option(None),
    log_every: Optional[int] = typer.Option(None),
    image_size: Optional[int] = typer.Option(None, help="Input side in pixels; must match the vision encoder [224]."),
    blank_images: Optional[bool] = typer.Option(None, "--blank-images", help="Ablation: train and validate on all-zero images."),
    local_rank: int = typer.Option(-1, "--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher."),
):
    """Train the alignment modules (DeepSpeed; one or many GPUs, or CPU)."""
    from r2g.train.loop import run

    cfg = train_config(**{k: v for k, v in locals().items() if k not in ("local_rank", "run")})
    result = run(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        best = result["best"]
        chosen = f"best {best['metric']} {best['value']:.4f} at step {best['step']}" if best["value"] is not None else "final"
        console.print(f"[green]done[/]: {result['steps']} steps; {chosen} weights in {out}/trainable.safetensors")


# ---------------------------------------------------------------------------------------------- eval
def _gen_overrides(num_beams, min_new_tokens, max_new_tokens, repetition_penalty, length_penalty, batch_size) -> dict:
    values = dict(num_beams=num_beams, min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens,
                  repetition_penalty=repetition_penalty, length_penalty=length_penalty, batch_size=batch_size)
    return {k: v for k, v in values.items() if v is not None}


def print_metrics(metrics: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr",
                "ce_micro_precision", "ce_micro_recall", "ce_micro_f1", "ce_macro_f1", "ce_example_f1", "ce5_micro_f1"):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4f}")
    console.print(table)


@app.command("eval")
def eval_command(
    ckpt: Path = typer.Option(..., help="Run folder (r2g_config.json + trainable.safetensors or checkpoints/)."),
    shards: Path = typer.Option(..., help="Shard folder to evaluate on."),
    split: str = typer.Option("test"),
    out: Optional[Path] = typer.Option(None, help="Output folder [RUN/eval-SPLIT]."),
    llm: Optional[str] = typer.Option(None, help="Base LLM folder, if not the one in r2g_config.json."),
    checkpoint: Optional[str] = typer.Option(None, help="Read weights from a DeepSpeed checkpoint tag (or 'latest') instead of trainable.safetensors."),
    allow_llm_mismatch: bool = typer.Option(False, help="Go ahead when --llm's config differs from the trained one."),
    meteor: bool = typer.Option(True, help="Score METEOR (needs Java)."),
    labeler: str = typer.Option("rules", help="rules (built-in CheXpert-style) or chexbert (needs --labeler-weights)."),
    labeler_weights: Optional[str] = typer.Option(None, help="Local CheXbert folder (chexbert.pth + bert-base-uncased/)."),
    truncated_refs: bool = typer.Option(False, help="Compatibility only: score against references truncated to the token budget, as the reference code does (inflates scores)."),
    max_samples: int = typer.Option(0, help="Evaluate only the first N studies (0 = all)."),
    num_beams: Optional[int] = typer.Option(None), min_new_tokens: Optional[int] = typer.Option(None),
    max_new_tokens: Optional[int] = typer.Option(None), repetition_penalty: Optional[float] = typer.Option(None),
    length_penalty: Optional[float] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
    workers: int = typer.Option(2, help="Data-loader workers."),
    local_rank: int = typer.Option(-1, "--local_rank", "--local-rank", hidden=True),
):
    """Generate reports for a split and score them (BLEU, METEOR, ROUGE-L, CIDEr, CheXpert CE)."""
    from r2g.data.loader import shard_paths
    from r2g.eval.run import evaluate

    _, total = shard_paths(shards, split)
    total = min(total, max_samples) if max_samples else total
    is_rank0 = int(os.environ.get("RANK", 0)) == 0
    with progress_bar() as bar:
        task = bar.add_task(f"generating {split}", total=total, visible=is_rank0)
        metrics = evaluate(
            ckpt, shards, split, out, llm, checkpoint,
            _gen_overrides(num_beams, min_new_tokens, max_new_tokens, repetition_penalty, length_penalty, batch_size),
            meteor, labeler, labeler_weights, truncated_refs, allow_llm_mismatch, max_samples, workers,
            on_batch=lambda n: bar.advance(task, n),
        )
    if metrics:
        print_metrics(metrics, f"{ckpt.name} on {split} ({metrics['studies']} studies)")
        console.print("files: " + ", ".join(metrics["files"].values()))


@app.command()
def generate(
    inputs: list[str] = typer.Argument(..., help="Images, folders of images, or frontal.png,lateral.png pairs."),
    ckpt: Path = typer.Option(..., help="Run folder."),
    llm: Optional[str] = typer.Option(None, help="Base LLM folder, if not the one in r2g_config.json."),
    out: Optional[Path] = typer.Option(None, help="Write JSONL (.jsonl) or plain text (one report per line)."),
    num_beams: Optional[int] = typer.Option(None), min_new_tokens: Optional[int] = typer.Option(None),
    max_new_tokens: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
):
    """Write reports for new chest X-ray images."""
    import json

    from r2g.eval.generate import collect_studies, generate_reports
    from r2g.eval.reconstitute import reconstitute

    studies = collect_studies(inputs)  # bad paths fail before the model loads
    model, cfg = reconstitute(ckpt, llm)
    results = generate_reports(model, cfg, studies, _gen_overrides(num_beams, min_new_tokens, max_new_tokens, None, None, batch_size))
    if out is None:
        for r in results:
            console.print(f"[bold]{' + '.join(r['images'])}[/]\n{r['report']}\n", highlight=False)
    elif out.suffix == ".jsonl":
        out.write_text("".join(json.dumps(r) + "\n" for r in results))
    else:
        out.write_text("".join(r["report"] + "\n" for r in results))
    if out is not None:
        console.print(f"[green]wrote[/] {len(results)} report(s) to {out}")


@app.command()
def score(
    pred: Path = typer.Option(..., help="Predictions: JSONL {id, prediction, reference}, or R2Gen {id: [text]} JSON."),
    ref: Optional[Path] = typer.Option(None, help="R2Gen {id: [text]} references (with an R2Gen predictions file)."),
    meteor: bool = typer.Option(True, help="Score METEOR (needs Java)."),
    labeler: str = typer.Option("rules"), labeler_weights: Optional[str] = typer.Option(None),
    out: Optional[Path] = typer.Option(None, help="Write the metrics as JSON here."),
):
    """Score any predictions file: coco-caption NLG metrics and CheXpert clinical efficacy."""
    import json

    from r2g.metrics.score import load_pairs, score as score_pairs

    refs, preds = load_pairs(pred, ref)
    metrics = score_pairs(refs, preds, meteor=meteor, labeler=labeler, labeler_weights=labeler_weights)
    print_metrics(metrics, f"{pred.name} ({len(refs)} reports)")
    if out:
        out.write_text(json.dumps(metrics, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), help="Working folder for data, shards, models and runs."),
    studies: int = typer.Option(1500, help="Synthetic studies to generate."),
    steps: int = typer.Option(300, help="Alignment training steps (each model)."),
    seed: int = typer.Option(0),
):
    """The main job on a laptop CPU: synthetic data → shards → tiny LM → delta alignment with DeepSpeed →
    evaluation, and the same model trained with blanked images, side by side."""
    from r2g.demo.run import DemoOptions, run_demo

    results = run_demo(DemoOptions(out=out, studies=studies, steps=steps, seed=seed), log=lambda m: console.rule(m))
    table = Table(title=f"test split, {results['with-images']['studies']} studies")
    table.add_column("metric")
    table.add_column("sees the images", justify="right")
    table.add_column("images blanked", justify="right")
    for key in ("BLEU_1", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr", "ce_micro_precision", "ce_micro_recall",
                "ce_micro_f1", "ce_macro_f1", "ce_example_f1", "ce5_micro_f1"):
        table.add_row(key, *(f"{results[run][key]:.3f}" for run in ("with-images", "blank-images")))
    console.print(table)
    gain = results["ce_micro_f1_gain"]
    console.print(f"CE micro F1 gain from seeing the images: [bold]{gain['gain']:+.3f}[/] "
                  f"(95% paired bootstrap interval {gain['low']:+.3f} to {gain['high']:+.3f})")
    console.print(f"report: {results['with-images']['files']['html']}")
    console.print(f"done in {results['seconds'] / 60:.1f} min; everything is under {out}/")


def main() -> None:
    try:
        app()
    except R2GError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
