"""A human-readable evaluation report: metric tables and example reports, as Markdown and self-contained HTML.

Both files hold the same content: the NLG metrics, the clinical-efficacy (CE) metrics under their three
conventions, the per-label CE scores, any other numbers and string notes found in `metrics`, then example
studies: the best and worst `n_examples` by per-report score and `n_examples` random others (seeded). Each
example shows its reference and prediction side by side and the CheXpert labels on which they differ; the
HTML page also shows the study's images as small embedded PNG thumbnails and, when given, the training curves
(no external files, fonts or JS).
"""

from __future__ import annotations

import base64
import html
import io
import numbers
import random
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from r2g.errors import R2GError
from r2g.labels import CHEXPERT_LABELS
from r2g.metrics.keys import CE_CONVENTIONS, CE_KEYS, CE_SCORES, NLG_METRICS

THUMBNAIL_SIDE = 192
MISSING = "n/a"

NLG_NOTE = "Scores on R2Gen-cleaned text, computed with pycocoevalcap without the PTB tokenizer"
# metrics["references"]: what the predictions were scored against (r2g.eval.run writes one of these).
REFERENCES_FULL = "full cleaned reports"
REFERENCES_TRUNCATED = "truncated to the token budget (reference-implementation compatibility)"
AGAINST = {REFERENCES_FULL: "against the full reference reports.",
           REFERENCES_TRUNCATED: "against the reference reports truncated to the LLM's token budget, as the reference "
                                 "implementation scores them (this inflates the scores)."}
CURVES_NOTE = ("Training loss and learning rate at each logged step, validation scores at each validation, "
               "from the run's metrics.jsonl.")

CE_NOTE = ("Labels from the reference and generated reports (CheXpert-style labeler). \"positive = 1 only\": "
           "0, -1 (uncertain) and blank count as negative; \"uncertain counts as positive\": 1 and -1 count as "
           "positive on both sides.")
PER_LABEL_NOTE = "14-label convention (positive = 1 only); support = positive reference reports."

KNOWN_KEYS = {key for key, _ in NLG_METRICS} | {"per_label"} | set(CE_KEYS)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; line-height: 1.45; max-width: 1200px; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { font-size: 1rem; margin: 1.4rem 0 .4rem; }
table { border-collapse: collapse; margin: .4rem 0; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; vertical-align: top; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.note { color: #57606a; font-size: .9rem; margin: .2rem 0; }
.score { color: #57606a; font-weight: normal; }
table.pair { width: 100%; table-layout: fixed; }
table.pair th.images { width: 210px; }
table.pair td.text { white-space: pre-wrap; }
td.images img { display: block; margin: 0 0 4px; border: 1px solid #d0d7de; }
.noimg { color: #8c959f; font-style: italic; }
p.diffs { font-size: .9rem; margin: .3rem 0; }
img.curves { max-width: 100%; }
"""


@dataclass(frozen=True)
class _Table:
    """Plain-text cells; the first `text_columns` columns are text, the others right-aligned numbers."""

    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    text_columns: int = 1


@dataclass(frozen=True)
class _Section:
    heading: str
    note: str
    table: _Table


def write_report(out_dir: Path, rows: list[dict], metrics: dict, thumbnails: dict[str, list[bytes]], title: str,
                 n_examples: int = 5, seed: int = 0, curves: bytes | None = None) -> dict[str, Path]:
    """Write `out_dir/report.md` and `out_dir/report.html`; returns {"markdown": path, "html": path}.

    `rows`: one per study, {"id", "prediction", "reference", "score", "labels_pred", "labels_ref"};
    `metrics`: NLG and CE floats, "per_label", and optional string notes; `thumbnails`: id -> image bytes
    (PNG or JPEG, one per view; ids may be missing); `curves`: a PNG of the training curves
    (r2g.eval.curves), shown in the HTML page when given.
    """
    if n_examples < 0:
        raise R2GError(f"n_examples is {n_examples}: pass 0 or more examples per section")
    sections = _metric_sections(metrics)
    examples = pick_examples(rows, n_examples, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["markdown"].write_text(_render_markdown(title, len(rows), sections, examples, thumbnails, curves is not None),
                                 encoding="utf-8")
    paths["html"].write_text(_render_html(title, len(rows), sections, examples, thumbnails, curves), encoding="utf-8")
    return paths


# ---- content shared by both formats -------------------------------------------------------------------------


def _fmt(value) -> str:
    """A metric value as text: floats with 3 decimals, ints as they are, a missing value as n/a."""
    if value is None:
        return MISSING
    return str(value) if isinstance(value, numbers.Integral) else f"{value:.3f}"


def _cell(metrics: dict, key: str) -> str:
    """A metric's value, with its 95 % interval when metrics.json holds one: `0.116 (0.101–0.130)`."""
    interval = metrics.get("intervals", {}).get(key)
    value = _fmt(metrics.get(key))
    return f"{value} ({interval[0]:.3f}–{interval[1]:.3f})" if interval and value != MISSING else value


def _interval_note(metrics: dict) -> str:
    boot = metrics.get("bootstrap")
    if not boot:
        return ""
    return (f" In parentheses: the {boot['confidence']:.0%} interval, the 2.5th and 97.5th percentiles over "
            f"{boot['resamples']:,} resamples of the studies (seed {boot['seed']}), each metric recomputed on each "
            "resample as it is defined (corpus BLEU, CIDEr-D with the resample's document frequencies, METEOR from "
            "the jar's summed statistics, CE from summed counts).")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _metric_sections(metrics: dict) -> list[_Section]:
    """NLG, CE and per-label tables, then tables of unknown numbers and string notes when there are any."""
    intervals = _interval_note(metrics)
    sections = [_Section("Language metrics (NLG)", _nlg_note(metrics) + intervals, _nlg_table(metrics)),
                _Section("Clinical efficacy (CE)", CE_NOTE + intervals, _ce_table(metrics))]
    if metrics.get("per_label"):
        per_label = _per_label_table(metrics["per_label"])
        sections.append(_Section("Clinical efficacy per label", PER_LABEL_NOTE, per_label))
    other = [(key, _cell(metrics, key)) for key, value in metrics.items() if key not in KNOWN_KEYS and _is_number(value)]
    if other:
        sections.append(_Section("Other metrics", "", _Table(("Metric", "Value"), other)))
    notes = [(key, value) for key, value in metrics.items() if isinstance(value, str)]
    if notes:
        sections.append(_Section("Notes", "", _Table(("Key", "Value"), notes, text_columns=2)))
    return sections


def _nlg_note(metrics: dict) -> str:
    """How the NLG scores were computed, saying what they were scored against when `metrics` records it."""
    against = AGAINST.get(metrics.get("references"))
    return f"{NLG_NOTE}, {against}" if against else f"{NLG_NOTE}."


def _nlg_table(metrics: dict) -> _Table:
    """One row: BLEU-1..4, METEOR, ROUGE-L, CIDEr (n/a where absent, e.g. METEOR when disabled)."""
    return _Table(tuple(name for _, name in NLG_METRICS),
                  [tuple(_cell(metrics, key) for key, _ in NLG_METRICS)], text_columns=0)


def _ce_table(metrics: dict) -> _Table:
    """Precision, recall and F1 per convention and averaging; the convention is named on its first row."""
    rows = []
    for convention, averages in CE_CONVENTIONS:
        for i, (average, prefix) in enumerate(averages):
            scores = (_cell(metrics, f"{prefix}_{score}") for score in CE_SCORES)
            rows.append((convention if i == 0 else "", average, *scores))
    return _Table(("Convention", "Average", "Precision", "Recall", "F1"), rows, text_columns=2)


def _per_label_table(per_label: dict) -> _Table:
    rows = [(label, *(_fmt(s.get(k)) for k in ("precision", "recall", "f1", "support")))
            for label, s in per_label.items()]
    return _Table(("Label", "Precision", "Recall", "F1", "Support"), rows)


def pick_examples(rows: list[dict], n: int, seed: int) -> list[tuple[str, str, list[dict]]]:
    """[(heading, note, rows)] for the best n by score, the worst n of the rest, and n random others.

    With fewer than 3n rows the later sections get fewer (or no) studies; no study is shown twice.
    """
    if n == 0:
        return []
    ranked = sorted(rows, key=lambda row: row["score"], reverse=True)
    best = ranked[:n]
    worst = ranked[n:][::-1][:n]
    shown = {row["id"] for row in best + worst}
    pool = [row for row in rows if row["id"] not in shown]
    chosen = random.Random(seed).sample(pool, min(n, len(pool)))
    sections = [("Best examples", "Highest score first.", best),
                ("Worst examples", "Lowest score first.", worst),
                ("Random examples", f"Drawn with seed {seed} from the studies not shown above.", chosen)]
    return [(heading, note if shown_rows else "No studies left to show.", shown_rows)
            for heading, note, shown_rows in sections]


def _label_text(value) -> str:
    return "blank" if value is None else str(value)


def _label_diffs(row: dict) -> list[str]:
    """'Label: ref X, pred Y' for each CheXpert label whose reference and prediction values differ."""
    ref, pred = row["labels_ref"], row["labels_pred"]
    return [f"{label}: ref {_label_text(ref.get(label))}, pred {_label_text(pred.get(label))}"
            for label in CHEXPERT_LABELS if ref.get(label) != pred.get(label)]


def _diff_line(row: dict) -> str:
    return "; ".join(_label_diffs(row)) or "none (all 14 labels agree)"


# ---- Markdown ---------------------------------------------------------------------------------------------


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def _md(text) -> str:
    """Text safe inside a Markdown table cell or heading: one line, Markdown characters backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _md_table(table: _Table) -> str:
    align = ["---" if i < table.text_columns else "---:" for i in range(len(table.headers))]
    lines = [[_md(h) for h in table.headers], align] + [[_md(cell) for cell in row] for row in table.rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _md_example(rank: int, row: dict, n_images: int) -> str:
    images = f"{n_images} view(s), thumbnails in report.html" if n_images else "no image"
    return "\n".join([
        f"### {rank}. {_md(row['id'])} (score {_fmt(row['score'])})", "",
        _md_table(_Table(("Reference", "Prediction"), [(row["reference"], row["prediction"])], text_columns=2)), "",
        f"- Labels that differ: {_md(_diff_line(row))}",
        f"- Images: {images}",
    ])


def _render_markdown(title: str, n_rows: int, sections: list[_Section], examples: list[tuple[str, str, list[dict]]],
                     thumbnails: dict[str, list[bytes]], curves: bool) -> str:
    parts = [f"# {_md(title)}", f"{n_rows} studies. Image thumbnails are in report.html."]
    for section in sections:
        parts += [f"## {section.heading}", *([section.note] if section.note else []), _md_table(section.table)]
    if curves:
        parts += ["## Training curves", f"{CURVES_NOTE} The figure is in report.html."]
    for heading, note, chosen in examples:
        parts += [f"## {heading}", note]
        parts += [_md_example(rank, row, len(thumbnails.get(row["id"], [])))
                  for rank, row in enumerate(chosen, 1)]
    return "\n\n".join(parts) + "\n"


# ---- HTML -------------------------------------------------------------------------------------------------


def _thumbnail_png(data: bytes) -> bytes:
    """The image in `data` (PNG or JPEG) shrunk to at most THUMBNAIL_SIDE px a side, as PNG bytes."""
    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            image = image.convert("RGB")
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


def _html_image(data: bytes, alt: str) -> str:
    try:
        png = _thumbnail_png(data)
    except OSError:  # PIL.UnidentifiedImageError and truncated files
        return '<span class="noimg">unreadable image</span>'
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _html_images(study_id: str, views: list[bytes]) -> str:
    if not views:
        return '<span class="noimg">no image</span>'
    return "".join(_html_image(data, f"{study_id} view {i}") for i, data in enumerate(views, 1))


def _html_cell(table: _Table, column: int, text: str) -> str:
    css = "" if column < table.text_columns else ' class="num"'
    return f"<td{css}>{html.escape(text)}</td>"


def _html_table(table: _Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(_html_cell(table, i, cell) for i, cell in enumerate(row)) + "</tr>"
                   for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_example(rank: int, row: dict, views: list[bytes]) -> str:
    study_id = str(row["id"])
    return (
        f'<h3>{rank}. <span class="id">{html.escape(study_id)}</span> '
        f'<span class="score">score {_fmt(row["score"])}</span></h3>\n'
        '<table class="pair"><thead><tr><th class="images">Images</th><th>Reference</th><th>Prediction</th>'
        f'</tr></thead><tbody><tr><td class="images">{_html_images(study_id, views)}</td>'
        f'<td class="text">{html.escape(str(row["reference"]))}</td>'
        f'<td class="text">{html.escape(str(row["prediction"]))}</td></tr></tbody></table>\n'
        f'<p class="diffs"><b>Labels that differ:</b> {html.escape(_diff_line(row))}</p>'
    )


def _render_html(title: str, n_rows: int, sections: list[_Section], examples: list[tuple[str, str, list[dict]]],
                 thumbnails: dict[str, list[bytes]], curves: bytes | None) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="note">{n_rows} studies.</p>']
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.note:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        parts.append(_html_table(section.table))
    if curves is not None:  # as PNG bytes, like the thumbnails: the page stays one self-contained file
        uri = "data:image/png;base64," + base64.b64encode(curves).decode("ascii")
        parts += ["<h2>Training curves</h2>", f'<p class="note">{html.escape(CURVES_NOTE)}</p>',
                  f'<img class="curves" src="{uri}" alt="training curves">']
    for heading, note, chosen in examples:
        parts += [f"<h2>{html.escape(heading)}</h2>", f'<p class="note">{html.escape(note)}</p>']
        parts += [_html_example(rank, row, thumbnails.get(row["id"], [])) for rank, row in enumerate(chosen, 1)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")
