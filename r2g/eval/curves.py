"""Training curves for the evaluation report: loss, learning rate and validation scores over optimizer steps,
read from a run's `metrics.jsonl` (r2g.train.logger) and drawn with matplotlib as one PNG.

A resumed run appends the steps it repeats after its last checkpoint; the last record of a step wins, as it
is the one the final weights descend from.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

# Validation scores drawn, when the log has them: the selection value and the headline metrics.
VAL_CURVES = ("select", "BLEU_4", "CIDEr", "ROUGE_L", "ce_micro_f1")


def read_series(path: Path) -> dict[str, dict[int, float]]:
    """{key: {step: value}} for every number in the log; unreadable lines (a line cut by a crash) are skipped."""
    series: dict[str, dict[int, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "time"):
                series.setdefault(key, {})[record["step"]] = float(value)
    return series


def training_curves(path: str | Path) -> bytes | None:
    """PNG of `draw(read_series(path))`; None when `path` does not exist or logs no loss (a run trained
    elsewhere, or stopped before its first logged step)."""
    path = Path(path)
    if not path.is_file():
        return None
    series = read_series(path)
    if not series.get("loss"):
        return None
    out = io.BytesIO()
    draw(series).savefig(out, format="png", dpi=90)
    return out.getvalue()


def draw(series: dict[str, dict[int, float]]):
    """A matplotlib Figure of three panels against step: training loss, learning rate, validation scores."""
    from matplotlib.figure import Figure  # not pyplot: no global figure state, no display backend (Agg)

    val = [(key, series[f"val/{key}"]) for key in VAL_CURVES if series.get(f"val/{key}")]
    # (title, [(name, {step: value})], y axis in powers of ten, legend)
    panels = [("training loss", [("loss", series.get("loss", {}))], False, False),
              ("learning rate", [("lr", series.get("lr", {}))], True, False),
              ("validation", val, False, True)]
    fig = Figure(figsize=(12, 3.2), layout="constrained")
    for ax, (title, lines, scientific, legend) in zip(fig.subplots(1, 3), panels):
        lines = [(name, points) for name, points in lines if points]
        for name, points in lines:
            steps = sorted(points)
            ax.plot(steps, [points[s] for s in steps], marker="o" if len(steps) < 20 else None, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if scientific and lines:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        if legend and lines:
            ax.legend(fontsize=8)
        if not lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    return fig
