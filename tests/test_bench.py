"""The benches' CPU paths, end to end in subprocesses (as they are run), each at its smallest setting: the
per-mode training-step bench at tiny shapes, the batched vs one-at-a-time generation bench on the tiny random model,
the encoder probe, metrics, label counts, length grouping, activation checkpointing, and the dry runs of the two
benches that write gigabytes. Every run must print the provenance header first and store it in its JSON, measured
now (bench/provenance.py)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from r2g.config import PROMPT, ModelConfig
from r2g.demo.toys import TINY_VISION_KWARGS
from r2g.model.prompt import IMAGE_CLOSE, IMAGE_OPEN

from .test_train import ROOT, _env

pytestmark = pytest.mark.slow

# Every runnable script in bench/ and the test here that runs it (a new bench needs a test that checks its header).
BENCHES = {"train_step.py", "generate.py", "encoder_probe.py", "metrics.py", "label_stats.py", "length_grouping.py",
           "grad_ckpt.py", "llm7b_zero3.py", "plan_check.py", "gpu_check.py", "intervals.py",
           "shard_speed.py", "tp_decode.py"}  # gpu_check: tests/test_gpu_check.py


def run_script(script: str, *args: str) -> str:
    """Run bench/`script`; check that its first line is the provenance header of this checkout, today; its stdout."""
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert first.startswith(f"[bench] {today} ") and f"commit {head()[:7]}" in first, first
    return result.stdout


def run_bench(script: str, out: Path, *args: str) -> dict:
    """`run_script` with --json `out`; checks the provenance stored in it; the JSON."""
    run_script(script, "--json", str(out), *args)
    result = json.loads(out.read_text())
    check_provenance(result["provenance"])
    return result


def head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def gpu_names() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def check_provenance(p: dict) -> None:
    """A provenance record measured now, on this machine, at this checkout's commit."""
    when = datetime.datetime.fromisoformat(p["date"])
    assert when.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.timezone.utc) - when) < datetime.timedelta(minutes=10)
    assert p["git"]["commit"] == head() and isinstance(p["git"]["dirty"], bool)
    m = p["machine"]
    assert m["cores"] == os.cpu_count() and m["cpu"] and 0 < m["memory_available_gib"] <= m["memory_gib"]
    assert m["gpus"] == gpu_names()
    assert p["versions"] == {"python": ".".join(map(str, sys.version_info[:3])),
                             **{name: metadata.version(name) for name in ("torch", "deepspeed", "transformers")}}


def test_train_step_per_mode_at_tiny_shapes(tmp_path):
    from bench.shapes import stand_in_tokenizer

    r = run_bench("train_step.py", tmp_path / "r.json", "--llm-shapes", "tiny", "--steps", "2", "--warmup", "1")
    modes = {row["mode"]: row for row in r["modes"]}
    assert list(modes) == ["shallow", "delta", "deep"]
    # [bos] + "Human: <Img>" + visual tokens + "</Img> {prompt} \nAssistant:" + a report filling its budget.
    tok = stand_in_tokenizer()
    text = len(tok(IMAGE_OPEN, add_special_tokens=False)["input_ids"]) + len(
        tok(f"{IMAGE_CLOSE}{PROMPT} \nAssistant:", add_special_tokens=False)["input_ids"])
    visual = (TINY_VISION_KWARGS["img_size"] // 32) ** 2  # patch 4, three 2x merges: a 2 x 2 grid
    expected = 1 + text + visual + ModelConfig().max_report_tokens
    for row in modes.values():
        assert row["seq_len"] == expected and row["micro_batch"] == 6
        assert row["tokens_per_s"] > 0 and row["samples_per_s"] > 0 and row["tflops_per_gpu"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["samples_per_s"] * expected)
        assert row["mfu"] is None and row["max_mem_gib"] is None  # CPU: no peak to compare with
    assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["peak_tflops"] is None
    # shallow trains the mapper; delta adds Swin q/v LoRA; deep trains all of Swin.
    assert modes["shallow"]["trainable_params"] < modes["delta"]["trainable_params"] < modes["deep"]["trainable_params"]


def test_generate_bench_decodes_in_the_precision_r2g_eval_uses(monkeypatch):
    """On a GPU (here bf16 on the CPU) the tiny model decodes as `r2g eval` loads a bf16 run: Swin and the mapper
    bf16 too, the LLM's rotary frequencies fp32."""
    import torch

    from bench import generate as bench_generate
    from r2g.precision import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(bench_generate, "inference_placement", lambda: (cpu, resolve_precision("bf16", cpu)))
    model, precision, _, _ = bench_generate.random_run(reports=1, new_tokens=2)
    assert precision.name == "bf16" and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {b.dtype for n, b in model.llm.named_buffers() if "inv_freq" in n} == {torch.float32}


def test_generate_batched_vs_single_on_the_tiny_model(tmp_path):
    r = run_bench("generate.py", tmp_path / "g.json", "--reports", "4", "--batch-size", "2", "--new-tokens", "5")
    batched, single = r["batched"], r["single"]
    assert (batched["batch_size"], single["batch_size"]) == (2, 1)
    assert batched["reports"] == single["reports"] == 4
    assert batched["tokens"] == single["tokens"] == 4 * 5  # min = max new tokens: every report is 5 tokens
    for x in (batched, single):
        assert x["reports_per_s"] > 0 and x["tokens_per_s"] > 0
    assert r["speedup"] == pytest.approx(batched["reports_per_s"] / single["reports_per_s"])
    assert r["generate"]["num_beams"] == 3 and r["generate"]["repetition_penalty"] == 2.0
    assert [c["num_beams"] for c in r["batched_equals_single"]] == [3, 1]
    # Generation prompts have no padding, so batching must not change a report (beam search or greedy).
    assert [(c["equal"], c["of"]) for c in r["batched_equals_single"]] == [(4, 4), (4, 4)]


def test_roc_auc_on_hand_computed_cases():
    import torch

    from bench.encoder_probe import roc_auc

    y = torch.tensor([0, 0, 1, 1])
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4 ordered right
    assert roc_auc(y, torch.tensor([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(y, torch.tensor([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)  # ties count half
    assert roc_auc(y, torch.tensor([0.9, 0.8, 0.2, 0.1])) == pytest.approx(0.0)
    assert roc_auc(torch.tensor([1, 1]), torch.tensor([0.1, 0.2])) is None  # one class: undefined


def test_encoder_probe_on_generated_shards(tmp_path):
    from r2g.data.shard import ShardOptions, shard_dataset
    from r2g.demo.dataset import generate

    generate(tmp_path / "data", studies=60, style="mimic_cxr", seed=0, image_size=64, workers=1)
    shard_dataset(tmp_path / "data" / "annotation.json", tmp_path / "data" / "images", tmp_path / "shards",
                  ShardOptions("mimic_cxr", shard_size=50))
    r = run_bench("encoder_probe.py", tmp_path / "p.json", "--shards", str(tmp_path / "shards"), "--image-size", "64",
                  "--vision-arch", "swin_tiny_patch4_window7_224", "--vision-kwargs", json.dumps(TINY_VISION_KWARGS),
                  "--steps", "5")
    assert r["studies"]["train"] > r["studies"]["test"] > 0
    assert r["visual_tokens"] == [4, 256]  # 64 px, patch 4, three 2x merges: 2 x 2 tokens of 32 * 8 channels
    for probe in ("grid", "per_token"):
        aucs = r["auc"][probe]
        assert len(aucs) == 14
        for label, auc in aucs.items():
            assert (auc is None) == (r["positives_test"][label] in (0, r["studies"]["test"]))
            assert auc is None or 0.0 <= auc <= 1.0


def test_every_bench_is_run_by_a_test():
    scripts = {p.name for p in (ROOT / "bench").glob("*.py") if '__name__ == "__main__"' in p.read_text()}
    assert scripts == BENCHES


def test_provenance_header_and_record(tmp_path, monkeypatch):
    from bench import provenance

    rec = provenance.record()
    check_provenance(rec)
    line = provenance.header(rec)
    assert line.startswith(rec["date"][:10]) and f"commit {head()[:7]}" in line and f"{os.cpu_count()} cores" in line
    assert ("no GPU" in line) == (not rec["machine"]["gpus"])
    assert f"torch {metadata.version('torch')}" in line and f"Python {sys.version_info.major}." in line
    dirty = dict(rec, git={"commit": "f" * 40, "dirty": True})
    assert "commit fffffff + uncommitted changes" in provenance.header(dirty)
    two = dict(rec, machine={**rec["machine"], "gpus": ["NVIDIA H200"] * 2})
    assert "2 x NVIDIA H200" in provenance.header(two)
    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # not a git checkout: said, not guessed
    state = provenance.git_state()
    assert state["commit"] is None and state["why"]
    assert "commit unknown" in provenance.header(dict(rec, git=state))


def test_large_writes_are_announced_and_refused_when_the_disk_is_too_small(tmp_path, capsys):
    from bench.provenance import announce_write

    target = tmp_path / "not" / "there"
    announce_write("weights", 10**6, target)
    assert f"writing weights: 0.00 GB to {target}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--work"):
        announce_write("weights", 10**18, target)  # an exabyte
    assert not (tmp_path / "not").exists()  # announcing writes nothing


def test_llm_size_announced_is_llama2_7b():
    from bench.llm7b_zero3 import llm_bytes

    # Llama-2-7B's parameter count in bf16 (write_llm also checks every size against the model's parameters)
    assert llm_bytes("7b") == 2 * 6_738_415_616


def test_big_benches_say_what_they_would_write_and_where():
    out = run_script("llm7b_zero3.py", "--dry-run")
    work = ROOT / "runs" / "llm7b_zero3"
    assert f"writing the 7b LLM (random bf16 weights): 13.48 GB to {work / 'llm-7b'} " in out \
        or f"reusing the 7b LLM in {work / 'llm-7b'}" in out
    out = run_script("plan_check.py", "--dry-run", "--cases", "tiny-delta-z2-1,1b-deep-z2-1")
    work = ROOT / "runs" / "plan_check"
    for size, gb in (("tiny", "0.01"), ("1b", "1.88")):
        assert f"LLM (random bf16 weights): {gb} GB to {work / f'llm-{size}'} " in out \
            or f"reusing the {size} LLM in {work / f'llm-{size}'}" in out
    assert "05b" not in out
    # the default work folders are inside the checkout and ignored by git
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "runs/llm7b_zero3", "runs/plan_check"],
                             capture_output=True, text=True)
    assert ignored.stdout.split() == ["runs/llm7b_zero3", "runs/plan_check"]


def iu_style_reports(path: Path) -> Path:
    """An IU-Xray-style reports file (train and val lists of {report}) of reports from 4 to 40 words."""
    sentences = ["The heart is normal in size.", "There is a large right pleural effusion.", "No pneumothorax.",
                 "The lungs are clear.", "Mild cardiomegaly.", "Degenerative changes of the spine."]
    reports = [" ".join(sentences[j % len(sentences)] for j in range(i, i + 1 + i % 8)) for i in range(30)]
    path.write_text(json.dumps({"train": [{"report": r} for r in reports[:24]],
                                "val": [{"report": r} for r in reports[24:]]}))
    return path


def test_metrics_bench_smoke(tmp_path):
    r = run_bench("metrics.py", tmp_path / "m.json", "--reports", str(iu_style_reports(tmp_path / "r.json")),
                  "--pairs", "12", "--no-meteor")
    (run,) = r["runs"]
    assert run["pairs"] == 12 and run["meteor"] is False and run["seconds"] > 0 and 0 <= run["BLEU_4"] <= 1


def test_intervals_bench_smoke(tmp_path):
    r = run_bench("intervals.py", tmp_path / "i.json", "--reports", str(iu_style_reports(tmp_path / "r.json")),
                  "--pairs", "12", "--resamples", "20", "--no-meteor")
    (run,) = r["runs"]
    assert run["pairs"] == 12 and run["meteor"] is False and run["resamples"] == 20 and run["keys"] == 33
    assert run["resampling_s"] > 0 and "CIDEr" in run["per_family_s"] and r["paired"]["keys"] == 33


def test_label_stats_bench(tmp_path):
    r = run_bench("label_stats.py", tmp_path / "l.json", "--reports", str(iu_style_reports(tmp_path / "r.json")))
    assert r["studies"] == 30
    for label, counts in r["counts"].items():
        assert sum(counts.values()) == 30, label
    # "a large right pleural effusion" is in every report whose sentences include the second one
    effusion = sum("pleural effusion" in e["report"] for split in json.loads((tmp_path / "r.json").read_text()).values()
                   for e in split)
    assert r["counts"]["Pleural Effusion"]["positive"] == effusion > 0


def test_length_grouping_bench_smoke(tmp_path):
    rows = run_bench("length_grouping.py", tmp_path / "g.json", "--iu", str(iu_style_reports(tmp_path / "r.json")),
                     "--mimic", "12", "--steps", "0")["rows"]  # padding only: no tiny LM to train and time
    assert [row["dataset"] for row in rows] == ["iu_xray", "mimic_cxr (synthetic)"]
    assert "tiny_step" not in rows[0]
    assert rows[0]["studies"] == 24 and rows[1]["studies"] == 12
    assert rows[0]["grouped"]["report_padding"] < rows[0]["plain"]["report_padding"]


def test_grad_ckpt_bench_smoke(tmp_path):
    rows = run_bench("grad_ckpt.py", tmp_path / "c.json", "--timing", "--modes", "shallow", "--layers", "1", "--hidden",
                     "64", "--heads", "2", "--intermediate", "128", "--swin", "tiny", "--micro-batch", "1", "--reps", "1",
                     "--threads", "1")["rows"]
    (row,) = rows
    assert row["mode"] == "shallow" and row["off_s"] > 0 and row["on_s"] > 0
    assert row["ratio"] == pytest.approx(row["on_s"] / row["off_s"])


def test_shard_speed_compares_both_decodes_on_one_mimic_size_image(tmp_path):
    rows = run_bench("shard_speed.py", tmp_path / "s.json", "--images", "1", "--grain", "0.003")["rows"]
    (row,) = rows
    assert row["images"] == 1 and row["max_side"] == 512 and row["full_per_core"] > 0 and row["reduced_per_core"] > 0
    assert row["mean_file_mb"] > 0.1 and row["max_abs_diff"] <= 16
    # the reduced path step by step (the bench checks that these steps give encode_image's bytes) and its ceiling
    steps = row["steps_ms"]
    assert set(steps) == {"read", "decode", "resize", "resize_lanczos", "encode", "decode_1_8"}
    assert all(v > 0 for v in steps.values())
    assert row["ceiling_speedup"] == pytest.approx(1000 / row["full_per_core"] / steps["decode_1_8"], rel=0.02)


def test_tp_decode_bench_says_what_it_would_write_and_compares_with_one_process():
    out = run_script("tp_decode.py", "--dry-run")
    work = ROOT / "runs" / "tp_decode"
    assert f"writing the 1b LLM (random bf16 weights): 1.88 GB to {work / 'llm-1b'} " in out \
        or f"reusing the 1b LLM in {work / 'llm-1b'}" in out
    from bench.tp_decode import ratios

    measured = {"whole": {"tokens_per_s": 2.0, "max_rank_peak_uss_gb": 4.0},
                "zero3": {"tokens_per_s": 0.5, "max_rank_peak_uss_gb": 3.0},
                "tp": {"tokens_per_s": 3.0, "max_rank_peak_uss_gb": 2.0}}
    assert ratios(measured) == {"whole": {"tokens_per_s": 1.0, "peak_uss_per_rank": 1.0},
                                "zero3": {"tokens_per_s": 0.25, "peak_uss_per_rank": 0.75},
                                "tp": {"tokens_per_s": 1.5, "peak_uss_per_rank": 0.5}}
