"""The `r2g` command: parses flags, builds a config, calls one library function per command, prints.

Errors a user can fix (R2GError) print as one red line and exit 2, never as a traceback.
"""

from __future__ import annotations

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
    from r2g.data.synth import generate

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


# ---------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), help="Working folder for data, shards, models and runs."),
    studies: int = typer.Option(600, help="Synthetic studies to generate."),
    seed: int = typer.Option(0),
):
    """The main job: synthetic data → shards → summary, on a laptop CPU."""
    from r2g.data.synth import generate

    t0 = time.time()
    console.rule("1/2 generate a synthetic MIMIC-style dataset")
    summary = generate(out / "data", studies=studies, style="mimic", seed=seed, image_size=256, workers=2)
    console.print(summary)
    console.rule("2/2 shard it")
    _shard("mimic_cxr", out / "data" / "annotation.json", out / "data" / "images", out / "shards", None, 200, 2, False)
    console.print(f"[green]done[/] in {time.time() - t0:.0f} s; shards in {out / 'shards'}")


def main() -> None:
    try:
        app()
    except R2GError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
