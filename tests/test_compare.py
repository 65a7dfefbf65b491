"""`r2g compare`: the paired comparison of prediction files on real IU-Xray text, against an independent bootstrap
that runs pycocoevalcap and compute_ce on every materialised resample; refusals; the files and the CLI."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from r2g.errors import R2GError
from r2g.eval.compare import System, compare, load_system, write_outputs
from r2g.metrics.chexpert import label_reports
from r2g.metrics.clinical import compute_ce

DATA = Path(os.environ.get("R2G_IU_REPORTS", "/work/shared/data/iu_xray_reports_train_val.json"))
N = 50


@pytest.fixture(scope="module")
def systems(tmp_path_factory) -> dict[str, Path]:
    """Three prediction files over the same 50 real studies: A (other studies' reports), B (A with every third
    report right), A again (a copy, in another id order)."""
    if not DATA.exists():
        pytest.skip(f"{DATA} not available")
    from r2g.data.reports import clean_report

    rows = [e for split in json.loads(DATA.read_text()).values() for e in split][:N]
    refs = {e["id"]: clean_report(e["report"], "iu_xray") for e in rows}
    ids = list(refs)
    shuffled = [refs[k] for k in ids]
    random.Random(0).shuffle(shuffled)
    a = dict(zip(ids, shuffled))
    b = {k: refs[k] if i % 3 == 0 else a[k] for i, k in enumerate(ids)}
    out = tmp_path_factory.mktemp("systems")
    paths = {}
    for name, preds, order in (("a", a, ids), ("b", b, ids), ("a_copy", a, ids[::-1])):
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"id": k, "prediction": preds[k], "reference": refs[k]}) + "\n"
                                       for k in order))
    return paths


def test_identical_files_differ_by_exactly_zero_with_p_one(systems):
    result = compare([load_system(systems["a"]), load_system(systems["a_copy"])], meteor=False, resamples=300)
    assert len(result["rows"]) == 14  # the headline keys but METEOR
    for row in result["rows"]:
        assert (row["delta"], row["low"], row["high"], row["p"], row["p_holm"]) == (0.0, 0.0, 0.0, 1.0, 1.0)


def test_compare_equals_an_independent_bootstrap_within_sampling_error(systems, tmp_path):
    """r2g's paired bootstrap (cached statistics, 1,000 resamples) against one written from scratch: 150 resamples
    drawn by Python's random, each materialised as a test set and scored by pycocoevalcap / compute_ce (on 30
    of the studies: pycocoevalcap's CIDEr takes 0.1 s a call)."""
    keys = ["BLEU_4", "CIDEr", "ce_micro_f1"]
    a, b = (load_system(systems[name]) for name in ("a", "b"))
    ids = list(a.refs)[:30]
    a, b = (System(s.name, {k: s.refs[k] for k in ids}, {k: s.preds[k] for k in ids}) for s in (a, b))
    ours = {r["metric"]: r for r in compare([a, b], keys, meteor=False, resamples=1000, seed=0)["rows"]}

    ref_labels = dict(zip(ids, label_reports([a.refs[k] for k in ids])))
    pred_labels = {s.name: dict(zip(ids, label_reports([s.preds[k] for k in ids]))) for s in (a, b)}

    def scores(drawn: list[str], system: System) -> dict[str, float]:
        gts = {str(j): [system.refs[k]] for j, k in enumerate(drawn)}
        res = {str(j): [system.preds[k]] for j, k in enumerate(drawn)}
        ce = compute_ce([ref_labels[k] for k in drawn], [pred_labels[system.name][k] for k in drawn])
        return {"BLEU_4": Bleu(4).compute_score(gts, res, verbose=0)[0][3], "CIDEr": Cider().compute_score(gts, res)[0],
                "ce_micro_f1": ce["ce_micro_f1"]}

    observed = {k: scores(ids, b)[k] - scores(ids, a)[k] for k in keys}
    rng = random.Random(12345)
    diffs = {k: [] for k in keys}
    for _ in range(150):
        drawn = rng.choices(ids, k=len(ids))
        sa, sb = scores(drawn, a), scores(drawn, b)
        for k in keys:
            diffs[k].append(sb[k] - sa[k])
    for k in keys:
        d, row = np.array(diffs[k]), ours[k]
        assert row["delta"] == pytest.approx(observed[k], rel=1e-12), k
        # r2g's 2.5th / 97.5th percentiles cut off about 2.5 % of the independent draws each (binomial: at most
        # 12 of 150 by a wide margin), and the two bootstrap distributions have the same spread
        assert np.mean(d < row["low"]) <= 0.08 and np.mean(d > row["high"]) <= 0.08, k
        assert np.mean(d < row["delta"]) == pytest.approx(0.5, abs=0.2), k
        spread = d.std()
        assert 0.75 < (row["high"] - row["low"]) / (3.92 * spread) < 1.33, k
        p = (1 + np.sum(np.abs(d - observed[k]) >= abs(observed[k]))) / (len(d) + 1)
        assert abs(row["p"] - p) < 0.06, k


def test_compare_refuses_other_studies_or_other_references(systems, tmp_path):
    a = load_system(systems["a"])
    rows = [json.loads(line) for line in systems["a"].read_text().splitlines()]
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    with pytest.raises(R2GError, match=rf"1 only in .*a.jsonl \(first: \['{rows[0]['id']}'\]\), 0 only in"):
        compare([a, load_system(fewer)], meteor=False)
    other_ref = tmp_path / "other_ref.jsonl"
    rows[3]["reference"] += " extra"
    other_ref.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(R2GError, match=rf"different references for 1 studies \(first: \['{rows[3]['id']}'\]\)"):
        compare([a, load_system(other_ref)], meteor=False)
    with pytest.raises(R2GError, match="two or more"):
        compare([a], meteor=False)
    with pytest.raises(R2GError, match="--metrics: nope not scored"):
        compare([a, a], ["nope"], meteor=False)
    with pytest.raises(R2GError, match="not an `r2g eval` output folder"):
        load_system(tmp_path)


def test_compare_command_writes_json_and_a_forest_plot_three_systems(systems, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-m", "r2g.cli", "compare", str(systems["a"]), str(systems["b"]),
                          str(systems["a_copy"]), "--no-meteor", "--metrics", "BLEU_4,ce_micro_f1",
                          "--bootstrap", "200", "--out", str(tmp_path)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "compare.json").read_text())
    assert [(Path(r["system"]).name, r["metric"]) for r in result["rows"]] == [
        ("b.jsonl", "BLEU_4"), ("b.jsonl", "ce_micro_f1"), ("a_copy.jsonl", "BLEU_4"), ("a_copy.jsonl", "ce_micro_f1")]
    better = result["rows"][0]
    assert better["delta"] > 0 and better["low"] > 0 and better["p"] < 0.05 and better["p_holm"] >= better["p"]
    assert "b.jsonl" in run.stdout and "ce_micro_f1" in run.stdout
    page = (tmp_path / "compare.html").read_text()
    assert "data:image/png;base64," in page and "Holm" in page and "a_copy.jsonl" in page
    paths = write_outputs(result, tmp_path / "again")
    assert json.loads(paths["json"].read_text()) == result
    bad = subprocess.run([sys.executable, "-m", "r2g.cli", "compare", str(systems["a"]), str(tmp_path / "none.jsonl"),
                          "--no-meteor"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "none.jsonl: file not found" in bad.stdout
