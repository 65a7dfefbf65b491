"""The evaluation report: example selection, metric formatting, HTML escaping, embedded thumbnails, the NLG note's
reference wording, and the training curves."""

import base64
import io
import json
import re

import pytest
from PIL import Image

from r2g.errors import R2GError
from r2g.eval.curves import draw, read_series, training_curves
from r2g.eval.report import REFERENCES_FULL, REFERENCES_TRUNCATED, write_report
from r2g.labels import CHEXPERT_LABELS

METRICS = {"BLEU_1": 0.1234, "BLEU_2": 0.2, "BLEU_3": 0.3, "BLEU_4": 0.0456, "ROUGE_L": 0.5, "CIDEr": 1.25,
           "ce_micro_precision": 0.6789, "ce_macro_f1": 0.111, "ce_example_recall": 0.222, "ce5_micro_f1": 0.333,
           "per_label": {name: {"precision": 0.5, "recall": 0.25, "f1": 0.333, "support": 7}
                         for name in CHEXPERT_LABELS},
           "num_reports": 12, "mystery": 0.98765, "ce_convention": "rules labeler <v1>"}


def png(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("L", size, 128).save(out, format=fmt)
    return out.getvalue()


def make_rows(n: int) -> list[dict]:
    """Study s{i:02d} scores i / 100, so the best are the highest indexes; labels differ on Cardiomegaly."""
    rows = []
    for i in range(n):
        ref, pred = dict.fromkeys(CHEXPERT_LABELS), dict.fromkeys(CHEXPERT_LABELS)
        ref["Cardiomegaly"] = 1
        rows.append({"id": f"s{i:02d}", "score": i / 100, "reference": f"reference {i} heart & lungs",
                     "prediction": f"prediction {i}", "labels_ref": ref, "labels_pred": pred})
    rows[11 % n]["prediction"] = "<script>alert(1)</script>"
    return rows


def section(text: str, heading: str) -> str:
    """The text of one '## heading' section, up to the next '## ' heading."""
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def ids_in(md_section: str) -> list[str]:
    return re.findall(r"^### \d+\. (\S+)", md_section, flags=re.M)


def html_ids(html_text: str) -> list[str]:
    return re.findall(r'<span class="id">(.*?)</span>', html_text)


@pytest.fixture
def report(tmp_path):
    thumbs = {"s11": [png((600, 400)), png((300, 500), "JPEG")], "s00": [png((50, 40))]}
    paths = write_report(tmp_path / "out", make_rows(12), METRICS, thumbs, "Run <A> & B", n_examples=3, seed=1)
    return paths, paths["markdown"].read_text(), paths["html"].read_text()


def test_files_written(report):
    paths, _, _ = report
    assert paths["markdown"].name == "report.md" and paths["html"].name == "report.html"
    assert all(p.is_file() for p in paths.values())


def test_best_worst_random(report, tmp_path):
    _, md, html_text = report
    best, worst = ids_in(section(md, "Best examples")), ids_in(section(md, "Worst examples"))
    assert best == ["s11", "s10", "s09"]
    assert worst == ["s00", "s01", "s02"]
    chosen = ids_in(section(md, "Random examples"))
    assert len(chosen) == 3 and not set(chosen) & set(best + worst)
    assert html_ids(html_text) == best + worst + chosen
    again = write_report(tmp_path / "again", make_rows(12), METRICS, {}, "t", n_examples=3, seed=1)
    assert ids_in(section(again["markdown"].read_text(), "Random examples")) == chosen


def test_metrics_formatted(report):
    _, md, html_text = report
    for text in (md, html_text):
        for value in ("0.123", "0.046", "1.250", "0.679", "0.111", "0.222", "0.333", "0.988"):
            assert value in text
        assert "n/a" in text  # METEOR absent
        assert "example-based (PromptMRG)" in text and "pycocoevalcap" in text
    assert "| Cardiomegaly | 0.500 | 0.250 | 0.333 | 7 |" in md
    assert "Cardiomegaly: ref 1, pred blank" in md


def test_html_escaped(report):
    _, md, html_text = report
    assert "<script>" not in html_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "Run &lt;A&gt; &amp; B" in html_text and "heart &amp; lungs" in html_text
    assert "rules labeler &lt;v1&gt;" in html_text
    assert "<script>" not in md


def test_thumbnails_embedded(report):
    _, md, html_text = report
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html_text)
    assert len(uris) == 3  # s11 (2 views, best) and s00 (1 view, worst)
    sizes = [Image.open(io.BytesIO(base64.b64decode(u))).size for u in uris]
    assert sizes[0] == (192, 128) and max(sizes[1]) == 192 and sizes[2] == (50, 40)
    s10 = re.search(r'class="id">s10</span>.*?</table>', html_text, flags=re.S).group()
    assert "no image" in s10 and "<img" not in s10
    assert "no image" in md and "http" not in html_text


def test_unreadable_image(tmp_path):
    paths = write_report(tmp_path, make_rows(2), METRICS, {"s01": [b"not an image"]}, "t", n_examples=1)
    assert "unreadable image" in paths["html"].read_text()


def test_few_rows_no_duplicates(tmp_path):
    paths = write_report(tmp_path, make_rows(4), {}, {}, "t", n_examples=3)
    md = paths["markdown"].read_text()
    shown = [ids_in(section(md, h)) for h in ("Best examples", "Worst examples", "Random examples")]
    assert shown == [["s03", "s02", "s01"], ["s00"], []]
    assert "No studies left to show." in md


def test_no_examples(tmp_path):
    md = write_report(tmp_path, make_rows(3), METRICS, {}, "t", n_examples=0)["markdown"].read_text()
    assert "## Best examples" not in md and "## Clinical efficacy (CE)" in md


def test_negative_examples_rejected(tmp_path):
    with pytest.raises(R2GError, match="n_examples"):
        write_report(tmp_path, make_rows(2), METRICS, {}, "t", n_examples=-1)


def test_nlg_note_says_what_the_scores_were_computed_against(tmp_path):
    def note(metrics: dict) -> str:
        md = write_report(tmp_path, make_rows(2), metrics, {}, "t", n_examples=0)["markdown"].read_text()
        return section(md, "Language metrics (NLG)")

    full, truncated = note({"references": REFERENCES_FULL}), note({"references": REFERENCES_TRUNCATED})
    assert "against the full reference reports" in full and "truncated" not in full
    assert "against the reference reports truncated to the LLM's token budget" in truncated
    assert "full reference" not in truncated
    assert "against" not in note({})  # metrics that do not say (e.g. a bare metrics dict): no claim either way


def write_log(path, records: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


LOG = [{"step": 0, "time": 1.0, "llm_weights_held": 10},
       *({"step": s, "time": 1.0 + s, "epoch": 0, "loss": 3.0 - 0.1 * s, "lr": 1e-4 * s} for s in range(1, 5)),
       {"step": 4, "time": 9.0, "val/BLEU_4": 0.1, "val/CIDEr": 0.2, "val/select": 0.15, "val/num_reports": 4},
       {"step": 3, "time": 10.0, "loss": 9.0, "lr": 3e-4},  # resumed after step 2: step 3 again, with a new loss
       {"step": 4, "time": 11.0, "loss": 8.0, "lr": 4e-4}]


def test_training_curves_plot_the_log(tmp_path):
    log = tmp_path / "metrics.jsonl"
    write_log(log, LOG, tail='{"step": 5, "loss": 1.')  # a line cut by a crash is skipped
    series = read_series(log)
    assert series["loss"] == {1: 2.9, 2: 2.8, 3: 9.0, 4: 8.0}  # the last record of a step wins
    assert series["val/BLEU_4"] == {4: 0.1} and "time" not in series and "step" not in series

    loss_ax, lr_ax, val_ax = draw(series).axes
    assert loss_ax.lines[0].get_xydata().tolist() == [[1, 2.9], [2, 2.8], [3, 9.0], [4, 8.0]]
    assert lr_ax.lines[0].get_ydata().tolist() == pytest.approx([1e-4, 2e-4, 3e-4, 4e-4])
    assert [line.get_label() for line in val_ax.lines] == ["select", "BLEU_4", "CIDEr"]

    png_bytes = training_curves(log)
    assert Image.open(io.BytesIO(png_bytes)).size == (1080, 288)  # 12 x 3.2 inches at 90 dpi


def test_training_curves_absent_without_a_log_with_losses(tmp_path):
    assert training_curves(tmp_path / "metrics.jsonl") is None
    write_log(tmp_path / "metrics.jsonl", LOG[:1])  # started, never logged a step
    assert training_curves(tmp_path / "metrics.jsonl") is None


def test_report_embeds_the_curves_when_given(tmp_path):
    curves = png((300, 80))
    with_curves = write_report(tmp_path / "a", make_rows(3), METRICS, {}, "t", n_examples=1, curves=curves)
    page = with_curves["html"].read_text()
    uri = re.search(r'<img class="curves" src="data:image/png;base64,([^"]+)" alt="training curves">', page).group(1)
    assert base64.b64decode(uri) == curves
    assert page.index("Training curves") < page.index("Best examples")
    assert "## Training curves" in with_curves["markdown"].read_text()

    without = write_report(tmp_path / "b", make_rows(3), METRICS, {}, "t", n_examples=1)
    assert "Training curves" not in without["html"].read_text() + without["markdown"].read_text()


def test_intervals_shown_beside_their_values(tmp_path):
    """metrics.json's intervals reach every metric table of both files, with how they were formed."""
    metrics = {**METRICS, "intervals": {"BLEU_4": [0.0301, 0.0612], "ce_micro_precision": [0.5, 0.8],
                                        "mystery": [0.9, 1.0]},
               "bootstrap": {"resamples": 1000, "seed": 0, "confidence": 0.95}}
    paths = write_report(tmp_path, make_rows(3), metrics, {}, "run", n_examples=0)
    md, html_text = paths["markdown"].read_text(), paths["html"].read_text()
    for text in (md, html_text):
        assert "0.046 (0.030–0.061)" in text and "0.679 (0.500–0.800)" in text and "0.988 (0.900–1.000)" in text
        assert "1,000 resamples of the studies (seed 0)" in text
        assert "0.123 (" not in text  # no interval, none shown
    assert "1,000 resamples" not in write_report(tmp_path / "plain", make_rows(3), METRICS, {}, "run",
                                                 n_examples=0)["markdown"].read_text()
