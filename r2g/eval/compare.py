"""`r2g compare A B [C ...]`: is B better than A on the same studies? Per metric, B − A with a paired-bootstrap
95 % interval, a two-sided p-value and a Holm-adjusted p-value; three or more systems: each against the first.

Each system is a prediction file (JSONL {id, prediction, reference}, or an R2Gen {id: [text]} file with the
shared `--ref`) or an `r2g eval` output folder (its predictions.jsonl). All systems must cover the same studies
with the same references; each is scored once (r2g.metrics.score.score_studies), then every comparison uses
the same resamples of the studies (r2g.metrics.bootstrap.paired).

Why the paired bootstrap and not approximate randomization: the interval needs the bootstrap anyway, and a
p-value from the same resamples cannot contradict it; it asks the question a reader of a test-set figure asks
(would B still beat A on another test set drawn like this one?), where randomization asks whether the two
outputs are exchangeable on these very studies; and it treats every metric alike, CIDEr-D's resampled
document frequencies included. The Holm adjustment is over every row of the table (every metric of every
comparison), so the adjusted p-values hold for the table as a whole.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import asdict, dataclass
from pathlib import Path

from r2g.errors import R2GError
from r2g.metrics.bootstrap import CONFIDENCE, DEFAULT_RESAMPLES, holm, paired, resample_weights
from r2g.metrics.keys import HEADLINE
from r2g.metrics.score import Scored, load_pairs, score_studies

TEST = ("paired bootstrap over studies (the same resamples for every system); p two-sided: the share of resampled "
        "differences, shifted to centre on 0, at least as far from 0 as the observed one, (1 + count) / (1 + resamples)")


@dataclass(frozen=True)
class System:
    name: str
    refs: dict[str, str]
    preds: dict[str, str]


def load_system(path: str | Path, ref: str | Path | None = None) -> System:
    """A prediction file or an `r2g eval` folder (its predictions.jsonl), named by its path."""
    path = Path(path)
    source = path / "predictions.jsonl" if path.is_dir() else path
    if path.is_dir() and not source.is_file():
        raise R2GError(f"{path}: a folder, but not an `r2g eval` output folder (no predictions.jsonl in it)")
    refs, preds = load_pairs(source, ref if source.suffix != ".jsonl" else None)
    return System(str(path), refs, preds)


def check_same_studies(base: System, other: System) -> None:
    """Raise R2GError naming the ids unless `other` covers `base`'s studies with the same reference texts."""
    only_base = [k for k in base.refs if k not in other.refs]
    only_other = [k for k in other.refs if k not in base.refs]
    if only_base or only_other:
        raise R2GError(
            f"{base.name} and {other.name} do not cover the same studies: {len(only_base)} only in {base.name} "
            f"(first: {only_base[:5]}), {len(only_other)} only in {other.name} (first: {only_other[:5]}); "
            "compare predictions of the same test split")
    differ = [k for k in base.refs if base.refs[k] != other.refs[k]]
    if differ:
        raise R2GError(
            f"{base.name} and {other.name} hold different references for {len(differ)} studies (first: {differ[:5]}); "
            "a comparison needs both scored against the same references (same split, same --truncated-refs)")


@dataclass(frozen=True)
class Row:
    system: str  # the one compared with the baseline
    metric: str
    a: float  # the baseline's score
    b: float
    delta: float  # b - a
    low: float
    high: float
    p: float
    p_holm: float


def compare(systems: list[System], metrics: list[str] | None = None, meteor: bool = True, labeler="rules",
            labeler_weights: str | None = None, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Every system after the first against the first: {"baseline", "systems", "studies", "resamples", "seed",
    "confidence", "test", "rows": [Row as dict]}. `metrics`: metrics.json keys (default: the headline ones)."""
    from r2g.metrics.chexpert import load_labeler

    if len(systems) < 2:
        raise R2GError("compare needs two or more prediction files (or eval folders): the first is the baseline")
    if resamples < 1:
        raise R2GError(f"--bootstrap {resamples}: a comparison needs resamples (1,000 is usual)")
    base = systems[0]
    for other in systems[1:]:
        check_same_studies(base, other)
    label = labeler if callable(labeler) else load_labeler(labeler, labeler_weights)
    ids = list(base.refs)
    scored: list[Scored] = [score_studies(base.refs, {k: s.preds[k] for k in ids}, meteor, label) for s in systems]
    known = [key for metric in scored[0].stats for key in metric.keys]
    wanted = metrics or [key for key in HEADLINE if key in known]
    unknown = [key for key in wanted if key not in known]
    if unknown:
        raise R2GError(f"--metrics: {', '.join(unknown)} not scored here; choose from {', '.join(known)}")

    weights = resample_weights(len(ids), resamples, seed)  # one draw for every comparison
    found = []
    for system, other in zip(systems[1:], scored[1:]):
        diffs = {d.key: d for d in paired(scored[0].stats, other.stats, len(ids), weights=weights,
                                          points=(scored[0].metrics, other.metrics))}
        found += [(system.name, diffs[key]) for key in wanted]
    adjusted = holm([d.p for _, d in found])
    rows = [Row(name, d.key, d.a, d.b, d.delta, d.low, d.high, d.p, p_holm)
            for (name, d), p_holm in zip(found, adjusted)]
    return {"baseline": base.name, "systems": [s.name for s in systems], "studies": len(ids),
            "resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "test": TEST,
            "holm": "over every row (every metric of every comparison)",
            "rows": [asdict(r) for r in rows]}


# ---- the HTML page --------------------------------------------------------------------------------------------

def forest_plot(result: dict) -> bytes:
    """PNG: one row per metric (per compared system), B − A with its interval, and a line at 0."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display (as r2g.eval.curves)

    rows = result["rows"]
    fig = Figure(figsize=(8, 0.32 * len(rows) + 1.2), layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    for y, row in zip(ys, rows):
        colour = "tab:blue" if row["p_holm"] < 0.05 else "tab:gray"
        ax.plot([row["low"], row["high"]], [y, y], color=colour, linewidth=2)
        ax.plot([row["delta"]], [y], "o", color=colour, markersize=5)
    ax.axvline(0.0, color="black", linewidth=0.8)
    several = len(result["systems"]) > 2
    ax.set_yticks(ys, [f"{r['metric']}" + (f"  ({Path(r['system']).name})" if several else "") for r in rows], fontsize=8)
    ax.set_xlabel(f"B − A, {result['confidence']:.0%} paired-bootstrap interval (blue: Holm-adjusted p < 0.05)")
    ax.grid(axis="x", alpha=0.3)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()


CSS = ("body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2rem auto; } "
       "table { border-collapse: collapse; } th, td { border: 1px solid #d0d7de; padding: .25rem .5rem; } "
       "td { text-align: right; font-variant-numeric: tabular-nums; } p.note { color: #57606a; font-size: .9rem; } "
       "img { max-width: 100%; }")


def render_html(result: dict) -> str:
    title = f"r2g compare: against {result['baseline']}"
    head = ("<tr><th>system (B)</th><th>metric</th><th>A</th><th>B</th><th>B − A</th>"
            f"<th>{result['confidence']:.0%} interval</th><th>p</th><th>p (Holm)</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(r['system'])}</td><td>{html.escape(r['metric'])}</td><td>{r['a']:.4f}</td>"
        f"<td>{r['b']:.4f}</td><td>{r['delta']:+.4f}</td><td>[{r['low']:+.4f}, {r['high']:+.4f}]</td>"
        f"<td>{r['p']:.4f}</td><td>{r['p_holm']:.4f}</td></tr>" for r in result["rows"])
    uri = "data:image/png;base64," + base64.b64encode(forest_plot(result)).decode("ascii")
    note = (f"A = {result['baseline']}; {result['studies']} studies, {result['resamples']} resamples (seed "
            f"{result['seed']}). Test: {result['test']}. Holm adjustment {result['holm']}.")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p class=\"note\">{html.escape(note)}</p>\n"
            f"<img src=\"{uri}\" alt=\"forest plot of B − A per metric\">\n"
            f"<table><thead>{head}</thead><tbody>{body}</tbody></table>\n</body>\n</html>\n")


def write_outputs(result: dict, out: str | Path) -> dict[str, Path]:
    """`out`/compare.json and `out`/compare.html (the table and the forest plot); returns their paths."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "compare.json", "html": out / "compare.html"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["html"].write_text(render_html(result), encoding="utf-8")
    return paths
