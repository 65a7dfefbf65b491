"""Evaluation through the real commands: reconstitution (safetensors and ZeRO checkpoint), `r2g eval`,
`r2g generate`, `r2g score`, and their bad-input messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r2g.config import DataConfig, ModelConfig, RunConfig
from r2g.errors import R2GError
from r2g.eval.reconstitute import reconstitute, zero_checkpoint_weights
from r2g.train.checkpoint import write_run_config

from .test_train import ROOT, _env, assets, train  # noqa: F401  (assets is a fixture)

pytestmark = pytest.mark.slow
R2G = [sys.executable, "-m", "r2g.cli"]


@pytest.fixture(scope="module")
def run_dir(assets, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("eval") / "run"
    # No validation: the export is the final weights, the same step as the latest ZeRO checkpoint.
    train(assets, out, "--ds", "ds_configs/zero2.json", "--mode", "delta", "--max-steps", "3", "--val-samples", "-1")
    return out


def r2g(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*R2G, *args], capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)


def test_zero_checkpoint_weights_equal_zero_to_fp32_and_the_export(run_dir, tmp_path):
    ours = zero_checkpoint_weights(run_dir)
    script = run_dir / "checkpoints" / "zero_to_fp32.py"
    out = tmp_path / "fp32"
    subprocess.run([sys.executable, str(script), str(run_dir / "checkpoints"), str(out), "--safe_serialization",
                    "--exclude_frozen_parameters"], check=True, capture_output=True, env=_env(), cwd=ROOT)
    files = list(out.glob("*.safetensors")) if out.is_dir() else [out]
    theirs = {k: v for f in files for k, v in load_file(f).items()}
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k].float()) for k in ours)
    export = load_file(run_dir / "trainable.safetensors")
    assert sorted(export) == sorted(ours) and all(torch.equal(export[k], ours[k]) for k in ours)


def test_reconstitute_loads_trained_weights_and_checks_the_base_llm(run_dir, assets, tmp_path):  # noqa: F811
    model, cfg = reconstitute(run_dir)
    export = load_file(run_dir / "trainable.safetensors")
    assert all(torch.equal(p.detach(), export[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert cfg.model.mode == "delta"

    other = tmp_path / "other-llm"
    other.mkdir()
    for f in (assets / "llm").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json.loads((other / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5 if config.get("rms_norm_eps") != 1e-5 else 1e-6
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(R2GError, match="differs from the base LLM this run was trained on"):
        reconstitute(run_dir, llm=str(other))
    reconstitute(run_dir, llm=str(other), allow_llm_mismatch=True)
    with pytest.raises(R2GError, match="no such checkpoint"):
        zero_checkpoint_weights(run_dir, "step99")


def test_eval_command_writes_predictions_metrics_and_report(run_dir, assets, tmp_path):  # noqa: F811
    out = tmp_path / "eval"
    r = r2g("eval", "--ckpt", str(run_dir), "--shards", str(assets / "shards"), "--split", "test", "--out", str(out),
            "--no-meteor", "--workers", "1", "--num-beams", "2", "--max-new-tokens", "6", "--min-new-tokens", "1",
            "--checkpoint", "latest")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["s0030", "s0031", "s0032", "s0033"]
    assert all(set(row) >= {"id", "prediction", "reference", "labels_reference", "labels_prediction"} for row in rows)
    # references are the full cleaned reports from the shards, not truncated
    assert rows[0]["reference"] == "study 30 . the heart normal-sized ."
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["studies"] == 4 and "BLEU_4" in metrics and "ce_micro_f1" in metrics and "METEOR" not in metrics
    assert metrics["references"] == "full cleaned reports" and metrics["weights"] == "latest"
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "s0030" in html
    assert (out / "report.md").is_file() and "BLEU_4" in r.stdout

    # the same file scores again through `r2g score`
    r = r2g("score", "--pred", str(out / "predictions.jsonl"), "--no-meteor", "--out", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    rescored = json.loads((tmp_path / "s.json").read_text())
    assert rescored["BLEU_4"] == pytest.approx(metrics["BLEU_4"]) and rescored["CIDEr"] == pytest.approx(metrics["CIDEr"])


def test_generate_writes_reports_and_rejects_unreadable_images(run_dir, assets, tmp_path):  # noqa: F811
    images = assets / "raw" / "images"
    pair = f"{images / 's0000' / '0.png'},{images / 's0000' / '1.png'}"
    out = tmp_path / "reports.jsonl"
    r = r2g("generate", "--ckpt", str(run_dir), str(images / "s0001" / "0.png"), pair, "--out", str(out),
            "--num-beams", "1", "--max-new-tokens", "5", "--min-new-tokens", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(row["images"]) for row in rows] == [1, 2] and all(isinstance(row["report"], str) for row in rows)

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    r = r2g("generate", "--ckpt", str(run_dir), str(bad))
    assert r.returncode == 2 and "broken.png: not a readable image" in r.stdout and "Traceback" not in r.stderr
    r = r2g("generate", "--ckpt", str(tmp_path / "no-run"), str(images / "s0001" / "0.png"))
    assert r.returncode == 2 and "r2g_config.json: not found" in r.stdout


def test_run_config_records_absolute_base_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig(data=DataConfig(shards="data/shards"),
                    model=ModelConfig(llm="models/llm", vision_weights="models/swin.safetensors"))
    write_run_config(tmp_path, cfg, "0" * 64)
    saved = RunConfig.load(tmp_path / "r2g_config.json")
    assert saved.model.llm == str(tmp_path / "models" / "llm")
    assert saved.model.vision_weights == str(tmp_path / "models" / "swin.safetensors")
    assert saved.data.shards == str(tmp_path / "data" / "shards")
    write_run_config(tmp_path, RunConfig(model=ModelConfig(llm="models/llm", vision_weights="none")), "0" * 64)
    assert RunConfig.load(tmp_path / "r2g_config.json").model.vision_weights == "none"  # a random Swin: no path
