"""The `r2g` command: parses flags, builds a config, calls one library function per command, prints.

Errors a user can fix (R2GError) print as one red line and exit 2, never as a traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import typing
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from r2g.config import DATASET_ALIASES, DATASETS, DataConfig
from r2g.errors import AgreedError, R2GError

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
    style: str = typer.Option("mimic_cxr", help="The dataset to imitate: mimic_cxr (1 frontal view) or iu_xray "
                                                "(frontal + lateral)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical output."),
    image_size: int = typer.Option(256, help="Image side in pixels."),
    workers: int = typer.Option(2, help="Worker processes."),
):
    """Generate a synthetic chest X-ray dataset in the R2Gen raw layout (with CheXpert ground truth)."""
    from r2g.config import dataset_name
    from r2g.demo.dataset import generate

    summary = generate(out, studies=studies, style=dataset_name(style, "--style"), seed=seed, image_size=image_size,
                       workers=workers)
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


# `r2g shard DATASET`, named as everywhere else; the older spellings (`r2g shard iu-xray`) work, unlisted.
for _name in DATASETS:
    shard_app.command(_name)(_shard_command(_name, f"shards/{_name}"))
for _alias, _name in DATASET_ALIASES.items():
    shard_app.command(_alias, hidden=True)(_shard_command(_name, f"shards/{_name}"))


@shard_app.command("verify")
def shard_verify(shards: Path = typer.Argument(..., help="Shard folder written by `r2g shard`.")):
    """Check every shard against manifest.json: full sha256 and sample count (exit 2 naming the bad ones)."""
    from r2g.data.shard import read_manifest, verify_shards

    manifest = read_manifest(shards)
    total = sum(len(v["shards"]) for v in manifest["splits"].values())
    with progress_bar() as bar:
        task = bar.add_task("verifying", total=total)
        checks = verify_shards(shards, on_shard=lambda _: bar.advance(task), manifest=manifest)
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
def _flag_type(hint) -> type:
    """The CLI type of a config field: JSON objects and choices are read as strings and checked by the config."""
    if hint in (bool, int, float):
        return hint
    return str


def config_flags(sections: tuple[str, ...], default_from: str = "",
                 only: tuple[str, ...] | None = None) -> list[inspect.Parameter]:
    """One `--flag` per settable field of the config `sections` (or only the fields named in `only`), named after
    it (`train.micro_batch` -> `--micro-batch`), with the field's help, choices and default (or `default_from`,
    where the value comes from). Unset flags are None, so the recipe or the default stands."""
    from r2g.config import SECTIONS, choices, flag_name

    params = []
    for section in sections:
        klass = SECTIONS[section]
        hints = typing.get_type_hints(klass)
        for f in dataclasses.fields(klass):
            if not f.metadata.get("cli", True) or (only is not None and f.name not in only):
                continue
            kind, flag = _flag_type(hints[f.name]), flag_name(f)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            allowed = choices(klass, f.name)
            help_text = f.metadata["help"] + (f" One of: {', '.join(allowed)}." if allowed else "") + f" (default: {default_from or default})"
            spelling = f"--{flag}/--no-{flag}" if kind is bool else f"--{flag}"
            option = typer.Option(None, spelling, help=help_text, rich_help_panel=f"{section} settings")
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=Optional[kind]))
    unknown = set(only or ()) - {p.name for p in params}
    if unknown:
        raise TypeError(f"config_flags: no settable field {sorted(unknown)} in the sections {sections}")
    return params


def config_overrides(flags: dict) -> dict[str, dict]:
    """Given flags (not None) -> {section: {field: value}}; JSON-object fields are parsed here."""
    from r2g.config import SECTIONS, flag_name

    overrides: dict[str, dict] = {}
    for section, klass in SECTIONS.items():
        hints = typing.get_type_hints(klass)
        for f in dataclasses.fields(klass):
            value = flags.get(f.name)
            if value is None:
                continue
            if typing.get_origin(hints[f.name]) is dict:
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise R2GError(f"--{flag_name(f)} must be a JSON object, e.g. '{{\"embed_dim\": 32}}' ({e})") from None
            overrides.setdefault(section, {})[f.name] = value
    return overrides


def train_config(flags: dict, recipe: str = "") -> "RunConfig":
    """Flags -> RunConfig: defaults, the shards' dataset presets, the recipe, the flags, the world size (from the
    launcher's WORLD_SIZE)."""
    from r2g.config import resolve
    from r2g.data.shard import read_manifest

    for required in ("llm", "shards"):
        if not flags.get(required):
            raise R2GError(f"--{required} is required")
    dataset = read_manifest(flags["shards"])["dataset"]
    return resolve(dataset, config_overrides(flags), int(os.environ.get("WORLD_SIZE", 1)), recipe)


def train(
    recipe: str = typer.Option("", help="Start from a reference recipe (flags given with it override it): "
                                        "r2gengpt-{iu,mimic}-{shallow,delta,deep}. See README, settings table."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved run config as JSON and exit "
                                      "without loading any model (world size from WORLD_SIZE, as a launcher sets it)."),
    local_rank: int = typer.Option(-1, "--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher."),
    **flags,
):
    """Train the alignment modules (DeepSpeed; one or many GPUs, or CPU)."""
    cfg = train_config(flags, recipe)
    if print_config:
        console.print_json(json.dumps(cfg.to_dict()))
        return
    from r2g.train.loop import run

    result = run(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        best = result["best"]
        chosen = f"best {best['metric']} {best['value']:.4f} at step {best['step']}" if best["value"] is not None else "final"
        console.print(f"[green]done[/]: {result['steps']} steps; {chosen} weights in {cfg.train.out}/trainable.safetensors")


def with_config_flags(command, sections: tuple[str, ...], default_from: str = "", only: tuple[str, ...] | None = None):
    """Give `command(..., **flags)` one CLI option per field of the config `sections` (or only the fields named
    in `only`; Typer reads the signature)."""
    own = [p for p in inspect.signature(command).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = inspect.Signature(own + config_flags(sections, default_from, only))
    return command


app.command()(with_config_flags(train, ("data", "model", "train", "generate")))


# ---------------------------------------------------------------------------------------------- eval
def print_metrics(metrics: dict, title: str) -> None:
    from r2g.metrics.keys import PRINTED

    intervals = metrics.get("intervals", {})
    table = Table(title=title)
    table.add_column("metric (metrics.json key)")
    table.add_column("value", justify="right")
    if intervals:
        table.add_column("95% interval", justify="right")
    table.add_column("what")
    for key, meaning in PRINTED.items():
        if key in metrics:
            low, high = intervals.get(key, (None, None))
            shown = [f"[{low:.4f}, {high:.4f}]" if low is not None else "-"] if intervals else []
            table.add_row(key, f"{metrics[key]:.4f}", *shown, meaning)
    if intervals:
        boot = metrics["bootstrap"]
        table.caption = (f"95% percentile intervals from {boot['resamples']:,} resamples of the studies (seed "
                         f"{boot['seed']}), every metric recomputed on each as it is defined; every key's interval "
                         "is in metrics.json")
    console.print(table)


# Flags shared by `r2g eval` and `r2g generate`: where the run and its base files are.
CKPT_HELP = "Run folder (r2g_config.json + trainable.safetensors or checkpoints/)."
LLM_HELP = "Base LLM folder, if not the one in r2g_config.json."
VISION_WEIGHTS_HELP = "Base Swin weights (file or folder), if not the ones in r2g_config.json."
CHECKPOINT_HELP = "Read weights from a DeepSpeed checkpoint tag (or 'latest') instead of trainable.safetensors."
MISMATCH_HELP = "Go ahead when --llm's config differs from the trained one."
BOOTSTRAP_HELP = ("Resamples of the studies for each metric's 95% interval (every metric recomputed on each, "
                  "seeded: the same input gives the same interval); 0 = no intervals.")
# Model-based metrics (r2g.metrics.model_based), each from a local folder; `pip install 'r2g[metrics]'`.
# "\[" keeps rich from reading [metrics] as markup.
METRIC_PANEL = "model-based metrics (pip install 'r2g\\[metrics]'; local folders, nothing downloaded)"
RADGRAPH_HELP = ("RadGraph F1 (simple, partial, complete): the unpacked radgraph model (config.json, vocabulary/, "
                 "weights.th) in a folder named after its type (radgraph, radgraph-xl, ...).")
BERTSCORE_HELP = ("BERTScore as ReXrank: a save_pretrained distilroberta-base folder (layer 5, idf off, F1 rescaled "
                  "with bert-score's distilroberta-base baseline).")
RATESCORE_HELP = "RaTEScore: a folder with ner/ (RaTE-NER-Deberta) and encoder/ (BioLORD-2023-C), each save_pretrained."
CHEXBERT_HELP = ("CheXbert F1 as f1chexbert (14- and 5-label micro/macro, uncertain = positive): a folder with "
                 "chexbert.pth and bert-base-uncased/. With --radgraph and --bertscore also gives RadCliQ-v1.")
GREEN_HELP = ("GREEN: a local causal LM judge (e.g. GREEN-radllama2-7b). Slow: the judge decodes up to ~1,400 "
              "tokens per report; with a 7B judge, hours on a GPU for MIMIC-CXR's 3,858 test reports, impractical "
              "on a CPU.")


def model_metrics(radgraph, bertscore, ratescore, chexbert, green) -> "ModelMetrics":
    from r2g.metrics.model_based import ModelMetrics

    return ModelMetrics(radgraph=radgraph, bertscore=bertscore, ratescore=ratescore, chexbert=chexbert, green=green)


DS_HELP = ("A ZeRO-3 config (ds_configs/zero3.json): the LLM is partitioned across the ranks of the launch "
           "(deepspeed / torchrun), for an LLM one GPU cannot hold. Default: each rank holds the whole model.")
TP_HELP = ("Split the LLM's layers over N processes (tensor parallel, DeepSpeed AutoTP): launch exactly N "
           "(deepspeed --num_gpus N / torchrun --nproc_per_node N); each holds 1/N of the LLM and they decode every "
           "study together. Faster than --ds for an LLM one GPU cannot hold. 1: not split.")


def eval_command(
    ckpt: Path = typer.Option(..., help=CKPT_HELP),
    shards: Optional[str] = typer.Option(None, help="Shard folder to evaluate on, if not the run's own (r2g_config.json)."),
    split: str = typer.Option("test"),
    out: Optional[Path] = typer.Option(None, help="Output folder [RUN/eval-SPLIT]."),
    llm: Optional[str] = typer.Option(None, help=LLM_HELP),
    vision_weights: Optional[str] = typer.Option(None, help=VISION_WEIGHTS_HELP),
    checkpoint: Optional[str] = typer.Option(None, help=CHECKPOINT_HELP),
    allow_llm_mismatch: bool = typer.Option(False, help=MISMATCH_HELP),
    meteor: bool = typer.Option(True, help="Score METEOR (needs Java)."),
    labeler: str = typer.Option("rules", help="rules (built-in CheXpert-style) or chexbert (needs --labeler-weights)."),
    labeler_weights: Optional[str] = typer.Option(None, help="Local CheXbert folder (chexbert.pth + bert-base-uncased/)."),
    radgraph: Optional[str] = typer.Option(None, help=RADGRAPH_HELP, rich_help_panel=METRIC_PANEL),
    bertscore: Optional[str] = typer.Option(None, help=BERTSCORE_HELP, rich_help_panel=METRIC_PANEL),
    ratescore: Optional[str] = typer.Option(None, help=RATESCORE_HELP, rich_help_panel=METRIC_PANEL),
    chexbert: Optional[str] = typer.Option(None, help=CHEXBERT_HELP, rich_help_panel=METRIC_PANEL),
    green: Optional[str] = typer.Option(None, help=GREEN_HELP, rich_help_panel=METRIC_PANEL),
    truncated_refs: bool = typer.Option(False, help="Compatibility only: score against references truncated to the token budget, as the reference code does (inflates scores)."),
    max_samples: int = typer.Option(0, help="Evaluate only the first N studies (0 = all)."),
    bootstrap: int = typer.Option(1000, help=BOOTSTRAP_HELP),
    workers: int = typer.Option(2, help="Data-loader workers."),
    ds: Optional[str] = typer.Option(None, "--ds", help=DS_HELP),
    tp: int = typer.Option(1, "--tp", help=TP_HELP),
    local_rank: int = typer.Option(-1, "--local_rank", "--local-rank", hidden=True),
    **generation,
):
    """Generate reports for a split and score them (BLEU, METEOR, ROUGE-L, CIDEr, CheXpert CE, and the
    model-based metrics whose folders are given)."""
    from r2g.eval.run import EvalOptions, evaluate, prepare

    opts = EvalOptions(
        split=split, out=out, shards=shards, llm=llm, vision_weights=vision_weights, checkpoint=checkpoint,
        allow_llm_mismatch=allow_llm_mismatch, meteor=meteor, labeler=labeler, labeler_weights=labeler_weights,
        models=model_metrics(radgraph, bertscore, ratescore, chexbert, green),
        truncated_refs=truncated_refs, max_samples=max_samples, bootstrap=bootstrap, workers=workers, ds=ds, tp=tp,
        generate=config_overrides(generation).get("generate", {}),  # over the run's own generation settings
    )
    plan = prepare(ckpt, opts)  # every input checked before the progress bar and the model load
    is_rank0 = int(os.environ.get("RANK", 0)) == 0
    with progress_bar() as bar:
        task = bar.add_task(f"generating {split}", total=plan.studies, visible=is_rank0)
        metrics = evaluate(plan, on_batch=lambda n: bar.advance(task, n))
    if metrics:
        print_metrics(metrics, f"{ckpt.name} on {split} ({metrics['studies']} studies)")
        held = metrics["inference"]
        if held["ds"] or held["tp"] > 1:
            how = "partitioned" if held["ds"] else "tensor-parallel"
            console.print(f"LLM {how} over {held['ranks']} rank(s): rank 0 held {held['llm_weights_held_rank0']:,} "
                          f"of {held['llm_weights_total']:,} weights")
        console.print("files: " + ", ".join(metrics["files"].values()))


app.command("eval")(with_config_flags(eval_command, ("generate",), default_from="the run's r2g_config.json"))


def generate(
    inputs: list[str] = typer.Argument(..., help="Images (PNG, JPEG, DICOM), folders of images, or frontal.png,lateral.png pairs."),
    ckpt: Path = typer.Option(..., help=CKPT_HELP),
    llm: Optional[str] = typer.Option(None, help=LLM_HELP),
    vision_weights: Optional[str] = typer.Option(None, help=VISION_WEIGHTS_HELP),
    checkpoint: Optional[str] = typer.Option(None, help=CHECKPOINT_HELP),
    allow_llm_mismatch: bool = typer.Option(False, help=MISMATCH_HELP),
    out: Optional[Path] = typer.Option(None, help="Write JSONL (.jsonl) or plain text (one report per line)."),
    ds: Optional[str] = typer.Option(None, "--ds", help=DS_HELP + " Every rank decodes every study; rank 0 writes."),
    tp: int = typer.Option(1, "--tp", help=TP_HELP + " Rank 0 writes."),
    local_rank: int = typer.Option(-1, "--local_rank", "--local-rank", hidden=True),
    **generation,
):
    """Write reports for new chest X-ray images."""
    from r2g.eval.generate import collect_studies, generate_reports
    from r2g.eval.reconstitute import load_run, open_run, partitioned_inference_config, tensor_parallel_inference_check

    # Every input checked before the model loads: each image decodes, the run folder and its base files exist.
    studies = collect_studies(inputs)
    run = open_run(ckpt, llm, vision_weights, checkpoint=checkpoint, allow_llm_mismatch=allow_llm_mismatch)
    tensor_parallel_inference_check(run, tp, ds)
    ds_config = partitioned_inference_config(run, ds) if ds else None
    # On the GPU when there is one, in the run's precision; with --ds or --tp, on every rank of the launch.
    loaded = load_run(run, ds_config, config_overrides(generation).get("generate", {}), tp=tp)
    results = generate_reports(loaded, studies)
    if loaded.rank != 0:
        return
    if out is None:
        for r in results:
            read = [s["file"] + (f" (DICOM frame {s['frame']})" if "frame" in s else "") for s in r["sources"]]
            console.print(f"[bold]{' + '.join(read)}[/]\n{r['report']}\n", highlight=False)
    elif out.suffix == ".jsonl":
        out.write_text("".join(json.dumps(r) + "\n" for r in results))
    else:
        out.write_text("".join(r["report"] + "\n" for r in results))
    if out is not None:
        console.print(f"[green]wrote[/] {len(results)} report(s) to {out}")


app.command()(with_config_flags(generate, ("generate",), default_from="the run's r2g_config.json"))


@app.command()
def serve(
    ckpt: Path = typer.Option(..., help=CKPT_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; the default is reachable from this machine only."),
    port: int = typer.Option(7860, help="Port (0: one the OS picks, printed)."),
    llm: Optional[str] = typer.Option(None, help=LLM_HELP),
    vision_weights: Optional[str] = typer.Option(None, help=VISION_WEIGHTS_HELP),
    checkpoint: Optional[str] = typer.Option(None, help=CHECKPOINT_HELP),
    allow_llm_mismatch: bool = typer.Option(False, help=MISMATCH_HELP),
):
    """A page to try a run: upload views (PNG, JPEG, DICOM) or pick a test study; report, CheXpert labels, scores."""
    from r2g.serve.run import ServedRun, load
    from r2g.serve.server import Server

    served = ServedRun(load(ckpt, llm, vision_weights, checkpoint, allow_llm_mismatch))
    try:
        server = Server((host, port), served, log=lambda m: console.print(m, highlight=False))
    except OSError as e:
        raise R2GError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]listening on {host}[/]: anyone who reaches it can run the model (no login)")
    console.print(f"serving {ckpt} on http://{host}:{server.server_address[1]}/ "
                  f"({served.device}, {served.precision.name}; {len(served.studies)} test studies) — Ctrl+C stops",
                  highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def score(
    pred: Path = typer.Option(..., help="Predictions: JSONL {id, prediction, reference}, or R2Gen {id: [text]} JSON."),
    ref: Optional[Path] = typer.Option(None, help="R2Gen {id: [text]} references (with an R2Gen predictions file)."),
    meteor: bool = typer.Option(True, help="Score METEOR (needs Java)."),
    labeler: str = typer.Option("rules"), labeler_weights: Optional[str] = typer.Option(None),
    bootstrap: int = typer.Option(1000, help=BOOTSTRAP_HELP),
    out: Optional[Path] = typer.Option(None, help="Write the metrics as JSON here."),
    radgraph: Optional[str] = typer.Option(None, help=RADGRAPH_HELP, rich_help_panel=METRIC_PANEL),
    bertscore: Optional[str] = typer.Option(None, help=BERTSCORE_HELP, rich_help_panel=METRIC_PANEL),
    ratescore: Optional[str] = typer.Option(None, help=RATESCORE_HELP, rich_help_panel=METRIC_PANEL),
    chexbert: Optional[str] = typer.Option(None, help=CHEXBERT_HELP, rich_help_panel=METRIC_PANEL),
    green: Optional[str] = typer.Option(None, help=GREEN_HELP, rich_help_panel=METRIC_PANEL),
):
    """Score any predictions file: coco-caption NLG metrics and CheXpert clinical efficacy, each with its 95%
    interval, and the model-based metrics whose folders are given."""
    from r2g.metrics.score import load_pairs, score as score_pairs

    refs, preds = load_pairs(pred, ref)
    metrics = score_pairs(refs, preds, meteor=meteor, labeler=labeler, labeler_weights=labeler_weights,
                          bootstrap=bootstrap, models=model_metrics(radgraph, bertscore, ratescore, chexbert, green),
                          log=lambda name: console.print(f"scoring {name}"))
    print_metrics(metrics, f"{pred.name} ({len(refs)} reports)")
    if out:
        out.write_text(json.dumps(metrics, indent=2) + "\n")


@app.command()
def compare(
    systems: list[Path] = typer.Argument(..., help="Prediction files (JSONL {id, prediction, reference}, or R2Gen "
                                                   "{id: [text]} with --ref) or `r2g eval` folders; the first is A, "
                                                   "each other one is compared with it."),
    ref: Optional[Path] = typer.Option(None, help="R2Gen {id: [text]} references (with R2Gen prediction files)."),
    metrics: Optional[str] = typer.Option(None, help="Comma-separated metrics.json keys [the headline ones]."),
    bootstrap: int = typer.Option(1000, help="Paired resamples of the studies."),
    seed: int = typer.Option(0, help="Seed of the resamples."),
    meteor: bool = typer.Option(True, help="Score METEOR (needs Java)."),
    labeler: str = typer.Option("rules"), labeler_weights: Optional[str] = typer.Option(None),
    out: Optional[Path] = typer.Option(None, help="Write compare.json and compare.html (forest plot) in this folder."),
):
    """B − A per metric on the same studies, with a paired-bootstrap 95% interval, p-value and Holm-adjusted p."""
    from r2g.eval.compare import compare as compare_systems, load_system, write_outputs

    loaded = [load_system(path, ref) for path in systems]
    keys = [k.strip() for k in metrics.split(",") if k.strip()] if metrics else None
    result = compare_systems(loaded, keys, meteor=meteor, labeler=labeler, labeler_weights=labeler_weights,
                             resamples=bootstrap, seed=seed)
    print_comparison(result)
    if out:
        paths = write_outputs(result, out)
        console.print("files: " + ", ".join(str(p) for p in paths.values()))


def print_comparison(result: dict) -> None:
    several = len(result["systems"]) > 2
    table = Table(title=f"B − A, A = {result['baseline']} ({result['studies']} studies)")
    if several:
        table.add_column("B")
    for column in ("metric", "A", "B", "B − A", "95% interval", "p", "p (Holm)"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for r in result["rows"]:
        mark = "[bold]" if r["p_holm"] < 0.05 else ""
        table.add_row(*([Path(r["system"]).name] if several else []), r["metric"], f"{r['a']:.4f}", f"{r['b']:.4f}",
                      f"{mark}{r['delta']:+.4f}", f"[{r['low']:+.4f}, {r['high']:+.4f}]", f"{r['p']:.4f}",
                      f"{mark}{r['p_holm']:.4f}")
    if not several:
        table.title += f", B = {result['systems'][1]}"
    table.caption = (f"paired bootstrap, {result['resamples']:,} resamples (seed {result['seed']}); p two-sided; "
                     f"smallest possible p {1 / (result['resamples'] + 1):.4f}; Holm over every row; "
                     "bold: Holm-adjusted p < 0.05")
    console.print(table)


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
    from r2g.metrics.keys import HEADLINE

    results = run_demo(DemoOptions(out=out, studies=studies, steps=steps, seed=seed), log=lambda m: console.rule(m))
    table = Table(title=f"test split, {results['with-images']['studies']} studies")
    table.add_column("metric")
    table.add_column("sees the images", justify="right")
    table.add_column("images blanked", justify="right")
    for key in (k for k in HEADLINE if all(k in results[run] for run in ("with-images", "blank-images"))):
        table.add_row(key, *(f"{results[run][key]:.3f}" for run in ("with-images", "blank-images")))
    console.print(table)
    print_comparison(results["compare"])  # `r2g compare` of the two runs: A images blanked, B sees them
    gain = results["ce_micro_f1_gain"]
    console.print(f"CE micro F1 gain from seeing the images: [bold]{gain['gain']:+.3f}[/] "
                  f"(95% paired bootstrap interval {gain['low']:+.3f} to {gain['high']:+.3f}, p {gain['p']:.3f}, "
                  f"Holm-adjusted {gain['p_holm']:.3f})")
    console.print(f"report: {results['with-images']['files']['html']}")
    console.print(f"done in {results['seconds'] / 60:.1f} min; everything is under {out}/")


# ---------------------------------------------------------------------------------------------- plan
# The run settings `r2g plan` takes, as `r2g train` does (same flags, help and defaults, from r2g/config.py).
PLAN_SETTINGS = ("mode", "grad_ckpt", "ds_config", "micro_batch", "precision")


def plan(
    llm: str = typer.Option(..., help="Local HF folder (only config.json is read) or a built-in config: llama2-7b, "
                                      "llama2-13b, llama2-70b, llama3-8b, llama3-70b, mistral-7b, qwen2.5-7b, qwen2.5-72b."),
    gpus: int = typer.Option(1, help="GPUs per node."),
    nodes: int = typer.Option(1, help="Nodes."),
    gpu_mem: float = typer.Option(80.0, help="Memory per GPU in GiB (per process with --device cpu)."),
    dataset: str = typer.Option(DataConfig.dataset, help=f"{' or '.join(DATASETS)}: report token budget, views and "
                                                         "train studies."),
    studies: Optional[int] = typer.Option(None, help="Train studies per epoch [MIMIC-CXR 270,790; IU-Xray 2,069]."),
    mfu: float = typer.Option(0.40, help="Assumed model FLOPs utilisation (0-1) for the time estimate."),
    gpu: str = typer.Option("H100", help="GPU name for its bf16 peak (H100, H100 NVL, H200, B200, A100, ...: r2g/model/flops.py)."),
    gpu_tflops: Optional[float] = typer.Option(None, help="Peak TFLOP/s per GPU, instead of --gpu's."),
    device: str = typer.Option("cuda", help="cuda, or cpu: a CPU process as r2g trains there (fp32, no CUDA context)."),
    test_studies: Optional[int] = typer.Option(None, help="Test studies to decode [MIMIC-CXR 3,858; IU-Xray 590]."),
    link_gbps: Optional[float] = typer.Option(None, help="GB/s per GPU between GPUs, for ZeRO-3's gathers and TP's "
                                                         "all-reduces [450 NVLink within a node, 50 across nodes]."),
    hbm_gbps: Optional[float] = typer.Option(None, help="GPU memory bandwidth in GB/s, instead of --gpu's."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON instead of a table."),
    **settings,
):
    """Will a training run fit in GPU memory, and how long will an epoch take? And decoding the test split: memory
    per GPU and hours, with the LLM whole, ZeRO-3-partitioned (--ds) or tensor-parallel (--tp). (no GPU, no weights
    needed)"""
    from r2g.config import ModelConfig, TrainConfig, dataset_name
    from r2g.model.flops import PEAK_FLOPS, peak_flops
    from r2g.plan import GIB, Setup, estimate, load_llm_shape, vision_shape

    if device not in ("cuda", "cpu"):
        raise R2GError(f"--device '{device}': choose cuda or cpu")
    peak = gpu_tflops * 1e12 if gpu_tflops else (peak_flops(gpu) if device == "cuda" else None)
    if device == "cuda" and peak is None:
        raise R2GError(f"--gpu '{gpu}': unknown peak; name one of {', '.join(PEAK_FLOPS)}, or pass --gpu-tflops")
    given = config_overrides(settings)
    model, train = ModelConfig(**given.get("model", {})), TrainConfig(**given.get("train", {}))
    setup = Setup.from_config(model, train, gpus=gpus, nodes=nodes, mem_gib=gpu_mem, dataset=dataset_name(dataset),
                              studies=studies, device=device, mfu=mfu, peak_tflops=peak / 1e12 if peak else None)
    mode, grad_ckpt, precision = setup.mode, setup.grad_ckpt, setup.precision
    shape = load_llm_shape(llm)
    result = estimate(shape, vision_shape(model), setup)
    decoding = plan_decoding(shape, result, gpu, test_studies, link_gbps, hbm_gbps) if device == "cuda" else None
    if json_out:
        print(json.dumps({**result.to_dict(), **({"decode": decoding} if decoding else {})}, indent=2))
        return
    s, seq, unit = result.setup, result.sequence, "GPU" if device == "cuda" else "process"
    table = Table(title=f"{llm} ({result.llm_params / 1e9:.2f}B) + Swin-B, {mode}, {s.world} {unit}(s), "
                        f"ZeRO-{s.ds.stage}{' offload' if s.ds.offload_param or s.ds.offload_optimizer else ''}, "
                        f"micro-batch {s.micro_batch}{', grad-ckpt' if grad_ckpt else ''}, "
                        f"precision {precision}")
    table.caption = ("total = the step's peak: weights and optimizer states + the larger of activations and gradients "
                     "(backward frees the one as it fills the other) + workspace")
    table.add_column(f"per {unit}")
    table.add_column("GiB", justify="right")
    for row, value in result.memory.items():
        table.add_row(row, f"{value / GIB:.2f}")
    verdict = "[green]fits[/]" if result.fits else "[red]does not fit[/]"
    table.add_row(f"[bold]total[/] vs --gpu-mem {gpu_mem:g}: {verdict}", f"[bold]{result.total / GIB:.2f}[/]")
    console.print(table)
    console.print(f"sequence {seq['total']} tokens = prompt {seq['prompt']} + visual {seq['visual']} + report "
                  f"{seq['report']}; trainable {sum(result.trainable.values()):,} ({', '.join(result.trainable)}); "
                  f"largest micro-batch that fits: {result.max_micro_batch}", highlight=False)
    if result.host_per_gpu:
        console.print(f"offloaded to host memory: {result.host_per_gpu / GIB:.1f} GiB per {unit}", highlight=False)
    time_line = f"{result.flops_per_sample / 1e12:.2f} TFLOP per sample"
    if result.samples_per_s:
        time_line += (f"; at {mfu:.0%} MFU of {s.peak_tflops:g} TFLOP/s: {result.samples_per_s:,.1f} samples/s over "
                      f"{s.world} {unit}(s), {result.hours_per_epoch:.2f} h per epoch of {result.studies:,} studies")
    console.print(time_line, highlight=False)
    console.print("assumptions: " + ", ".join(f"{k} {v:g}" for k, v in result.assumptions.items()), highlight=False)
    for line in result.suggestions:
        console.print(f"[yellow]would fit:[/] {line}", highlight=False)
    if decoding:
        print_decoding(decoding, gpu_mem, s.world)


def plan_decoding(shape, result, gpu: str, test_studies, link_gbps, hbm_gbps) -> dict:
    """`r2g plan`'s eval side (r2g.plan_decode) for the planned GPUs, dataset and precision."""
    from r2g.config import preset
    from r2g.plan_decode import HBM_GBPS, TEST_STUDIES, DecodeSetup, assumptions, decode_ways

    s, seq = result.setup, result.sequence
    hbm = hbm_gbps or HBM_GBPS.get(gpu)
    if hbm is None:
        raise R2GError(f"--gpu '{gpu}': unknown memory bandwidth; name one of {', '.join(HBM_GBPS)}, or pass --hbm-gbps")
    setup = DecodeSetup(gpus=s.world, nodes=s.nodes, bytes_per_weight=s.dtype_bytes()[0], hbm_gbps=hbm,
                        link_gbps=link_gbps, studies=test_studies or TEST_STUDIES[s.dataset],
                        prompt_tokens=seq["prompt"] + seq["visual"], max_new_tokens=preset(s.dataset)["max_new_tokens"],
                        prefetch_elements=s.ds.prefetch_bucket_size)
    return {"ways": [w.to_dict() for w in decode_ways(shape, setup)], "assumptions": assumptions(setup)}


def print_decoding(decoding: dict, gpu_mem: float, gpus: int) -> None:
    names = {"whole": "whole on every GPU", "zero3": "--ds zero3.json (ZeRO-3)", "tp": f"--tp {gpus} (tensor parallel)"}
    a = decoding["assumptions"]
    table = Table(title=f"decoding {a['test_studies']:,} test studies on {gpus} GPU(s): batch {a['batch_size']}, "
                        f"{a['num_beams']} beams, up to {a['steps_per_batch (max_new_tokens)']} tokens")
    for column in ("LLM held", "GiB per GPU", "ms per token step", "batches at once", "hours"):
        table.add_column(column, justify="left" if column == "LLM held" else "right")
    for w in decoding["ways"]:
        fits = "" if w["memory_gib"] <= gpu_mem else " [red](does not fit)[/]"
        table.add_row(names[w["name"]], f"{w['memory_gib']:.1f}{fits}", f"{w['step_ms']:.1f}",
                      str(w["batches_at_once"]), f"{w['hours']:.2f}")
    table.caption = ("memory-bound decoding: every token step reads every weight (ZeRO-3 also gathers them over "
                     "the link; TP all-reduces activations twice per layer); prefill not counted")
    console.print(table)
    console.print("decode assumptions: " + ", ".join(f"{k} {v:g}" for k, v in a.items()), highlight=False)


app.command()(with_config_flags(plan, ("model", "train"), only=PLAN_SETTINGS))


def main() -> None:
    together = False  # every rank raised the error at the same point (r2g.dist.AgreedError)
    try:
        try:
            app()  # Click ends even a successful command with SystemExit(0)
        except R2GError as e:
            together = isinstance(e, AgreedError)
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(2)
    except SystemExit as e:
        if "torch" in sys.modules:  # the command may have opened a process group
            from r2g.dist import close_distributed

            close_distributed(failed=bool(e.code) and not together)
        raise


if __name__ == "__main__":
    main()
