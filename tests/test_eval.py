"""Evaluation through the real commands: reconstitution (safetensors and ZeRO checkpoint), `r2g eval`,
`r2g generate`, `r2g score`, run folders used from other directories, and the bad-input messages (given
before any model loads)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from r2g import cli
from r2g.config import DataConfig, ModelConfig, RunConfig
from r2g.demo.toys import TINY_VISION_KWARGS
from r2g.dist import free_port
from r2g.errors import R2GError
from r2g.eval import generate as generate_module
from r2g.eval import reconstitute as reconstitute_module
from r2g.eval.reconstitute import inference_placement, load_for_inference, load_run, open_run, zero_checkpoint_weights
from r2g.metrics.keys import CE_KEYS, NLG_METRICS
from r2g.model.vision import build_vision_encoder
from r2g.precision import resolve_precision

from .damage import break_header
from .tiny_scorers import write_tiny_chexbert
from .test_train import ROOT, _env, train

pytestmark = pytest.mark.slow
R2G = [sys.executable, "-m", "r2g.cli"]
FAST = ("--num-beams", "1", "--max-new-tokens", "3", "--min-new-tokens", "1")  # generation settings for speed


@pytest.fixture(scope="module")
def run_dir(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    # No validation: the export is the final weights, the same step as the latest ZeRO checkpoint.
    train(assets, out, "--ds", "ds_configs/zero2.json", "--mode", "delta", "--max-steps", "3", "--val-samples", "-1")
    return out


def r2g(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*R2G, *args], capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)


def r2g_here(*args: str):
    """`r2g` in this process (so a test can patch the library), from the current directory."""
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def image(assets: Path, study: int = 1) -> str:
    return str(assets / "raw" / "images" / f"s{study:04d}" / "0.png")


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


def test_reconstitute_loads_trained_weights_and_checks_the_base_llm(run_dir, assets, tmp_path):
    run = open_run(run_dir)
    model, precision = load_for_inference(run, torch.device("cpu"))
    export = load_file(run_dir / "trainable.safetensors")
    assert all(torch.equal(p.detach(), export[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert run.cfg.model.mode == "delta" and not model.training and precision.name == "fp32"  # "auto" on the CPU

    other = tmp_path / "other-llm"
    other.mkdir()
    for f in (assets / "llm").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json.loads((other / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5 if config.get("rms_norm_eps") != 1e-5 else 1e-6
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(R2GError, match="differs from the base LLM this run was trained on"):
        open_run(run_dir, llm=str(other))
    assert open_run(run_dir, llm=str(other), allow_llm_mismatch=True).cfg.model.llm == str(other)
    with pytest.raises(R2GError, match="no such checkpoint"):
        zero_checkpoint_weights(run_dir, "step99")


def test_eval_command_writes_predictions_metrics_and_report(run_dir, assets, tmp_path):
    out = tmp_path / "eval"
    chexbert = write_tiny_chexbert(tmp_path / "chexbert")
    # no --shards: the run's own, from its r2g_config.json
    r = r2g("eval", "--ckpt", str(run_dir), "--split", "test", "--out", str(out),
            "--no-meteor", "--workers", "1", "--num-beams", "2", "--max-new-tokens", "6", "--min-new-tokens", "1",
            "--checkpoint", "latest", "--chexbert", str(chexbert))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["s0030", "s0031", "s0032", "s0033"]
    assert all(set(row) >= {"id", "prediction", "reference", "labels_reference", "labels_prediction"} for row in rows)
    # references are the full cleaned reports from the shards, not truncated
    assert rows[0]["reference"] == "study 30 . the heart normal-sized ."
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["studies"] == 4 and "BLEU_4" in metrics and "ce_micro_f1" in metrics and "METEOR" not in metrics
    assert metrics["references"] == "full cleaned reports" and metrics["weights"] == "latest"
    assert metrics["shards"] == str(assets / "shards")
    # every scored key has its interval (1,000 resamples by default), shown in the report and on the console
    assert set(metrics["intervals"]) == {k for k, v in metrics.items() if k != "studies" and isinstance(v, float)}
    assert metrics["bootstrap"]["resamples"] == 1000 and "95% interval" in r.stdout
    # a model-based metric from a local folder, with the weights that made it
    assert 0 <= metrics["chexbert_micro_f1"] <= 1 and metrics["metric_weights"]["chexbert_micro_f1"]["folder"] == "chexbert"
    assert list(metrics["per_study"]["chexbert_labels"]) == ["s0030", "s0031", "s0032", "s0033"]
    html = (out / "report.html").read_text()
    low, high = metrics["intervals"]["BLEU_4"]
    assert f"{metrics['BLEU_4']:.3f} ({low:.3f}–{high:.3f})" in html
    assert "data:image/png;base64," in html and "s0030" in html
    assert 'alt="training curves"' in html  # from the run's metrics.jsonl
    assert (out / "report.md").is_file() and "BLEU_4" in r.stdout

    # the same file scores again through `r2g score`
    r = r2g("score", "--pred", str(out / "predictions.jsonl"), "--no-meteor", "--out", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    rescored = json.loads((tmp_path / "s.json").read_text())
    assert rescored["BLEU_4"] == pytest.approx(metrics["BLEU_4"]) and rescored["CIDEr"] == pytest.approx(metrics["CIDEr"])
    # same studies, same seed: the same intervals (eval also scored --chexbert, which this does not)

    assert rescored["intervals"] == {k: v for k, v in metrics["intervals"].items() if k in CE_KEYS or k in dict(NLG_METRICS)}


def launched(*args: str, procs: int = 2) -> subprocess.CompletedProcess:
    """`r2g ARGS` on `procs` local ranks (torchrun)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
              "--master_port", str(free_port()), "-m", "r2g.cli"]
    return subprocess.run([*launch, *args], capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)


# Settings shared by the one-process and the multi-rank decodes compared below: eval at batch 1, so that no
# padding differs between the ways of splitting the split.
EVAL_ON_RANKS = ("--no-meteor", "--workers", "1", "--gen-batch-size", "1", "--num-beams", "2", "--max-new-tokens", "6",
                 "--min-new-tokens", "1", "--bootstrap", "50")
GENERATE_ON_RANKS = ("--num-beams", "2", "--max-new-tokens", "6", "--min-new-tokens", "1")


@pytest.fixture(scope="module")
def one_process(run_dir, assets, tmp_path_factory) -> Path:
    """eval (folder `whole`) and generate (`whole.jsonl`) in one process holding the model whole: what every way of
    splitting the LLM over ranks must reproduce."""
    out = tmp_path_factory.mktemp("one_process")
    r = r2g("eval", "--ckpt", str(run_dir), *EVAL_ON_RANKS, "--out", str(out / "whole"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = r2g("generate", "--ckpt", str(run_dir), image(assets, 1), image(assets, 2), *GENERATE_ON_RANKS,
            "--out", str(out / "whole.jsonl"))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_eval_and_generate_with_the_llm_partitioned_over_two_ranks_give_the_one_process_reports(
        run_dir, assets, one_process, tmp_path):
    """`--ds zero3.json` under a launcher: each rank holds half of the LLM, gathered layer by layer as the ranks
    decode in step, and the reports are those of one process holding it whole."""
    r = launched("eval", "--ckpt", str(run_dir), *EVAL_ON_RANKS, "--ds", "ds_configs/zero3.json",
                 "--out", str(tmp_path / "partitioned"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "LLM partitioned over 2 rank(s): rank 0 held" in r.stdout
    whole, partitioned = predictions(one_process / "whole"), predictions(tmp_path / "partitioned")
    assert [row["id"] for row in partitioned] == ["s0030", "s0031", "s0032", "s0033"]
    assert [row["prediction"] for row in partitioned] == [row["prediction"] for row in whole]
    metrics = json.loads((tmp_path / "partitioned" / "metrics.json").read_text())
    held, total = metrics["inference"]["llm_weights_held_rank0"], metrics["inference"]["llm_weights_total"]
    assert metrics["inference"]["ranks"] == 2 and total // 2 <= held <= total // 2 + 64  # half, plus padding
    one = json.loads((one_process / "whole" / "metrics.json").read_text())["inference"]
    assert one["ranks"] == 1 and one["llm_weights_held_rank0"] == one["llm_weights_total"] == total

    r = launched("generate", "--ckpt", str(run_dir), image(assets, 1), image(assets, 2), *GENERATE_ON_RANKS,
                 "--ds", "ds_configs/zero3.json", "--out", str(tmp_path / "partitioned.jsonl"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "partitioned.jsonl").read_text() == (one_process / "whole.jsonl").read_text()


def test_eval_and_generate_with_the_llm_tensor_parallel_over_two_ranks_give_the_one_process_reports(
        run_dir, assets, one_process, tmp_path):
    """`--tp 2` under a launcher: DeepSpeed AutoTP splits every decoder layer's linears over the two ranks, each
    reading only its slices, both decoding every study in step; reports and scores are one process's. Each rank
    holds half of every decoder linear; embeddings and norms are whole on every rank, and the tiny LLM's LM head
    (64 input features, which AutoTP splits in blocks of 64) lies on rank 0."""
    r = launched("eval", "--ckpt", str(run_dir), *EVAL_ON_RANKS, "--tp", "2", "--out", str(tmp_path / "tp"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "LLM tensor-parallel over 2 rank(s): rank 0 held" in r.stdout
    whole, split = predictions(one_process / "whole"), predictions(tmp_path / "tp")
    assert [row["id"] for row in split] == ["s0030", "s0031", "s0032", "s0033"]
    assert [row["prediction"] for row in split] == [row["prediction"] for row in whole]
    scores = [{k: v for k, v in json.loads((folder / "metrics.json").read_text()).items() if k not in ("inference", "files")}
              for folder in (one_process / "whole", tmp_path / "tp")]
    assert scores[0] == scores[1]
    held = json.loads((tmp_path / "tp" / "metrics.json").read_text())["inference"]
    llm = json.loads((assets / "llm" / "config.json").read_text())
    h, inter, layers, vocab = llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"], llm["vocab_size"]
    linears = 4 * h * h + 3 * h * inter  # q, k, v, o; gate, up, down
    norms = (2 * layers + 1) * h
    assert held["ranks"] == 2 and held["tp"] == 2
    assert held["llm_weights_total"] == layers * linears + norms + 2 * vocab * h
    assert held["llm_weights_held_rank0"] == layers * linears // 2 + norms + 2 * vocab * h

    r = launched("generate", "--ckpt", str(run_dir), image(assets, 1), image(assets, 2), *GENERATE_ON_RANKS,
                 "--tp", "2", "--out", str(tmp_path / "tp.jsonl"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "tp.jsonl").read_text() == (one_process / "whole.jsonl").read_text()


def test_generate_writes_reports_and_rejects_unreadable_images(run_dir, assets, tmp_path):
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


def test_load_run_gives_a_decoder_the_model_its_settings_and_tokenizer(run_dir):
    loaded = load_run(open_run(run_dir), generate={"num_beams": 1, "max_new_tokens": None})  # None: the run's own
    assert (loaded.rank, loaded.world, loaded.engine, loaded.synced) == (0, 1, None, False)  # one process, whole
    assert loaded.generate == dataclasses.replace(loaded.cfg.generate, num_beams=1) != loaded.cfg.generate
    assert loaded.tokenizer is loaded.model.tokenizer and not loaded.model.training
    assert loaded.device == torch.device("cpu") and loaded.precision.name == "fp32"


def test_a_dicom_reads_as_the_png_mimic_cxr_jpg_would_have_made_of_it(run_dir, tmp_path):
    """A synthetic X-ray written by pydicom as a detector stores it (12-bit, rescaled, MONOCHROME1; uncompressed
    and JPEG 2000) gives the report of the 8-bit PNG MIMIC-CXR-JPG's conversion makes of it. Not always the report
    of the PNG it came from: that conversion equalises the histogram (tests/test_dicom.py shows the pixels)."""
    pytest.importorskip("pydicom")
    from PIL import Image
    from pydicom.uid import JPEG2000Lossless

    from r2g.data.dicom import equalize_hist

    from .dicoms import radiograph_from_png, save, synthetic_xray

    png = synthetic_xray()
    Image.fromarray(equalize_hist(png)).save(tmp_path / "as-mimic-cxr-jpg.png")  # lossless, where they saved JPEG
    save(radiograph_from_png(png), tmp_path / "study.dcm")
    compressed = radiograph_from_png(png)
    compressed.compress(JPEG2000Lossless)
    save(compressed, tmp_path / "j2k.dcm")
    out = tmp_path / "reports.jsonl"
    r = r2g_here("generate", "--ckpt", run_dir, tmp_path / "as-mimic-cxr-jpg.png", tmp_path / "study.dcm",
                 tmp_path / "j2k.dcm", "--out", out, "--num-beams", "2", "--max-new-tokens", "8")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["report"] and rows[1]["report"] == rows[0]["report"] == rows[2]["report"]
    assert rows[0]["sources"] == [{"file": str(tmp_path / "as-mimic-cxr-jpg.png"), "format": "png"}]
    assert rows[1]["sources"] == [{"file": str(tmp_path / "study.dcm"), "format": "dicom", "frame": 0,
                                   "photometric": "MONOCHROME1", "transfer_syntax": "Explicit VR Little Endian"}]
    assert rows[2]["sources"][0]["transfer_syntax"] == "JPEG 2000 Image Compression (Lossless Only)"

    ct = radiograph_from_png(png)
    ct.Modality = "CT"
    r = r2g_here("generate", "--ckpt", run_dir, save(ct, tmp_path / "ct.dcm"))
    assert isinstance(r.exception, R2GError) and "ct.dcm: a CT image, not a radiograph" in str(r.exception)


def test_inference_placement_is_cuda_in_bf16_when_there_is_a_gpu(monkeypatch):
    def placed(*args) -> tuple:
        device, precision = inference_placement(*args)
        return device, precision.name, precision.llm_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert placed() == (torch.device("cuda"), "bf16", torch.bfloat16)
    assert placed("auto", torch.device("cuda", 1)) == (torch.device("cuda", 1), "bf16", torch.bfloat16)
    assert placed("fp32") == (torch.device("cuda"), "fp32", torch.float32)  # a run decodes as it trained
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placed() == (torch.device("cpu"), "fp32", torch.float32)


def test_a_run_decodes_in_the_precision_it_trained_in(run_dir, tmp_path):
    cfg = json.loads((run_dir / "r2g_config.json").read_text())
    cfg["train"]["precision"] = "bf16-mixed"  # frozen LLM in bf16, trainables in fp32 under bf16 autocast
    (tmp_path / "r2g_config.json").write_text(json.dumps(cfg))
    shutil.copy(run_dir / "trainable.safetensors", tmp_path)
    model, precision = load_for_inference(open_run(tmp_path), torch.device("cpu"))
    assert next(model.llm.parameters()).dtype == torch.bfloat16 and next(model.mapper.parameters()).dtype == torch.float32
    assert precision.autocast_dtype == torch.bfloat16 and precision.input_dtype == torch.float32


def test_a_bf16_run_decodes_the_same_reports_whole_and_partitioned(run_dir, tmp_path):
    """A run trained in precision bf16 decodes with every weight in bf16 and the LLM's rotary frequencies in fp32
    (as transformers computes them), whether the process holds the model whole or ZeRO-3 partitions it (--ds),
    so both ways give the same reports and scores."""
    run = tmp_path / "bf16-run"
    run.mkdir()
    cfg = json.loads((run_dir / "r2g_config.json").read_text())
    cfg["train"]["precision"] = "bf16"
    (run / "r2g_config.json").write_text(json.dumps(cfg))
    shutil.copy(run_dir / "trainable.safetensors", run)
    model, precision = load_for_inference(open_run(run), torch.device("cpu"))
    assert precision.name == "bf16" and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {b.dtype for n, b in model.llm.named_buffers() if "inv_freq" in n} == {torch.float32}

    common = ("eval", "--ckpt", str(run), "--no-meteor", "--workers", "1", "--num-beams", "2", "--max-new-tokens", "8",
              "--min-new-tokens", "1")
    for name, extra in (("whole", ()), ("partitioned", ("--ds", "ds_configs/zero3.json"))):
        r = r2g(*common, *extra, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    whole, partitioned = ([json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
                          for name in ("whole", "partitioned"))
    assert len(whole) == 4 and partitioned == whole
    scores = [{k: v for k, v in json.loads((tmp_path / name / "metrics.json").read_text()).items() if k != "inference"}
              for name in ("whole", "partitioned")]
    assert scores[0] == scores[1]


def test_generate_builds_the_model_where_inference_placement_says(run_dir, assets, tmp_path, monkeypatch):
    # `r2g generate` used to build the model in fp32 on the CPU whatever the machine; it now goes through the
    # shared loader, so a GPU placement (here bf16, on the CPU so that the test needs no GPU) reaches the model.
    cpu = torch.device("cpu")
    monkeypatch.setattr(reconstitute_module, "inference_placement",
                        lambda precision="auto", device=None: (cpu, resolve_precision("bf16", cpu)))
    seen, original = [], generate_module.generate_reports

    def spy(run, studies):
        seen.append((next(run.model.llm.parameters()).dtype, next(run.model.mapper.parameters()).dtype,
                     next(run.model.mapper.parameters()).device.type, run.generate.max_new_tokens))
        return original(run, studies)

    monkeypatch.setattr(generate_module, "generate_reports", spy)
    out = tmp_path / "reports.txt"
    r = r2g_here("generate", "--ckpt", run_dir, image(assets), "--out", out, *FAST)
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert seen == [(torch.bfloat16, torch.bfloat16, "cpu", 3)] and len(out.read_text().splitlines()) == 1


def test_run_config_records_absolute_base_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig(data=DataConfig(shards="data/shards"),
                    model=ModelConfig(llm="models/llm", vision_weights="models/swin.safetensors"))
    cfg.with_absolute_paths().save(tmp_path / "r2g_config.json", {"llm_config_sha256": "0" * 64})
    saved, meta = RunConfig.load_record(tmp_path / "r2g_config.json")
    assert meta == {"llm_config_sha256": "0" * 64} and not list(tmp_path.glob("*.tmp"))
    assert saved.model.llm == str(tmp_path / "models" / "llm")
    assert saved.model.vision_weights == str(tmp_path / "models" / "swin.safetensors")
    assert saved.data.shards == str(tmp_path / "data" / "shards")
    RunConfig(model=ModelConfig(llm="models/llm", vision_weights="none")).with_absolute_paths().save(tmp_path / "r2g_config.json")
    assert RunConfig.load(tmp_path / "r2g_config.json").model.vision_weights == "none"  # a random Swin: no path


def test_a_run_folder_works_from_any_directory(run_dir, assets, tmp_path, monkeypatch):
    # A run that recorded its base paths relative to where it was trained (tmp_path), as runs did before they
    # were written absolute: the demo's demo/tiny-lm, used after `cd demo`.
    proj = tmp_path / "proj"
    shutil.copytree(assets / "llm", proj / "models" / "llm")
    swin = build_vision_encoder(ModelConfig(vision_arch="swin_tiny_patch4_window7_224", vision_kwargs=TINY_VISION_KWARGS,
                                            mode="deep"))
    save_file({k: v.contiguous() for k, v in swin.state_dict().items()}, proj / "models" / "swin.safetensors")
    run = proj / "runs" / "x"
    run.mkdir(parents=True)
    cfg = json.loads((run_dir / "r2g_config.json").read_text())
    cfg["model"].update(llm="proj/models/llm", vision_weights="proj/models/swin.safetensors")
    (run / "r2g_config.json").write_text(json.dumps(cfg))
    shutil.copy(run_dir / "trainable.safetensors", run)

    monkeypatch.chdir(proj)
    assert open_run("runs/x").cfg.model.llm == str(proj / "models" / "llm")
    r = r2g_here("generate", "--ckpt", "runs/x", image(assets), "--out", "reports.jsonl", *FAST)
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert len((proj / "reports.jsonl").read_text().splitlines()) == 1

    # The base files moved: each missing one is named with the flag that overrides it, and the flags work.
    moved = shutil.move(proj / "models", tmp_path / "moved")
    r = r2g_here("generate", "--ckpt", "runs/x", image(assets))
    assert isinstance(r.exception, R2GError) and "model.llm 'proj/models/llm' not found" in str(r.exception)
    assert "pass --llm" in str(r.exception)
    r = r2g_here("generate", "--ckpt", "runs/x", image(assets), "--llm", moved / "llm")
    assert isinstance(r.exception, R2GError) and "pass --vision-weights" in str(r.exception)
    r = r2g_here("generate", "--ckpt", "runs/x", image(assets), "--llm", moved / "llm", "--vision-weights",
                 moved / "swin.safetensors", "--out", "again.jsonl", *FAST)
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert len((proj / "again.jsonl").read_text().splitlines()) == 1


def test_bad_inputs_fail_before_any_model_loads(run_dir, assets, tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("heavy work started before the inputs were checked")

    monkeypatch.setattr(reconstitute_module, "load_for_inference", must_not_run)  # what load_run calls
    monkeypatch.setattr(reconstitute_module, "load_partitioned_for_inference", must_not_run)
    monkeypatch.setattr(reconstitute_module, "load_tensor_parallel_for_inference", must_not_run)
    monkeypatch.setattr(cli, "progress_bar", must_not_run)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    good = Path(image(assets)).read_bytes()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "cut.png").write_bytes(good[: len(good) // 2])
    ckpt = ("--ckpt", run_dir)
    mixed = shutil.copytree(run_dir, tmp_path / "mixed", ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((mixed / "r2g_config.json").read_text())
    config["train"]["precision"] = "bf16-mixed"
    (mixed / "r2g_config.json").write_text(json.dumps(config))
    lora = shutil.copytree(run_dir, tmp_path / "lora", ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((lora / "r2g_config.json").read_text())
    config["model"]["llm_lora"] = True
    (lora / "r2g_config.json").write_text(json.dumps(config))
    cases = [
        (("generate", *ckpt, image(assets), tmp_path / "broken.png"), "broken.png: not a readable image"),
        (("generate", *ckpt, image(assets), tmp_path / "missing.png"), "missing.png: image not found"),
        (("generate", *ckpt, tmp_path / "folder"), "cut.png: not a readable image"),
        (("generate", "--ckpt", tmp_path / "no-run", image(assets)), "r2g_config.json: not found"),
        (("generate", *ckpt, image(assets), "--llm", tmp_path / "no-llm"), "--llm must be a local Hugging Face folder"),
        (("generate", *ckpt, image(assets), "--checkpoint", "step99"), "step99: no such checkpoint"),
        (("eval", "--ckpt", tmp_path / "no-run"), "r2g_config.json: not found"),
        (("eval", *ckpt, "--split", "nope"), "no 'nope' shards"),
        (("eval", *ckpt, "--shards", tmp_path), "manifest.json: not found"),
        (("eval", *ckpt, "--vision-weights", tmp_path / "no-swin.pth"), "--vision-weights"),
        (("eval", *ckpt, "--labeler", "chexbert"), "--labeler-weights"),
        (("eval", *ckpt, "--bootstrap", "-1"), "--bootstrap -1"),
        (("eval", *ckpt, "--radgraph", tmp_path / "no-radgraph"), "--radgraph"),
        (("eval", *ckpt, "--green", tmp_path), "--green"),
        (("eval", *ckpt, "--ds", tmp_path / "no-ds.json"), "no-ds.json: DeepSpeed config not found"),
        (("eval", *ckpt, "--ds", "ds_configs/zero2.json"), "needs ZeRO-3"),
        (("eval", "--ckpt", mixed, "--ds", "ds_configs/zero3.json"), "trained in bf16-mixed"),
        (("generate", *ckpt, image(assets), "--ds", "ds_configs/zero2.json"), "needs ZeRO-3"),
        # --tp: one process per slice (this is a world of one), whole heads per rank (the tiny LLM has 2)
        (("eval", *ckpt, "--tp", "2"), "--tp 2: launch exactly 2 processes"),
        (("generate", *ckpt, image(assets), "--tp", "2"), "this launch has 1"),
        (("eval", *ckpt, "--tp", "3"), "has 2 key/value heads; each rank needs at least one, so --tp can be at most 2"),
        (("eval", *ckpt, "--tp", "0"), "--tp 0: give the number of processes"),
        (("eval", *ckpt, "--tp", "2", "--ds", "ds_configs/zero3.json"), "choose one way to split the LLM"),
        (("generate", "--ckpt", lora, image(assets), "--tp", "2"), "trained LoRA inside the LLM (--llm-lora)"),
    ]
    for args, message in cases:
        r = r2g_here(*args)
        assert isinstance(r.exception, R2GError), (args, r.output, r.exception)
        assert message in str(r.exception), (args, str(r.exception))


def test_eval_stops_at_a_damaged_shard_even_when_the_run_read_past_them(run_dir, assets, tmp_path):
    """A score must cover the whole split: eval reads strictly whatever the run's skip_damaged_shards, so a test
    shard that ends early (same size, a corrupt header: only the count as it streams sees it) stops it, naming
    the shard, before anything is written."""
    shards = tmp_path / "shards"
    shutil.copytree(assets / "shards", shards)
    damaged = shards / "test-000000.tar"  # s0030..s0033
    break_header(damaged, "s0031")
    run = tmp_path / "run"
    run.mkdir()
    cfg = json.loads((run_dir / "r2g_config.json").read_text())
    cfg["data"]["skip_damaged_shards"] = True
    (run / "r2g_config.json").write_text(json.dumps(cfg))
    shutil.copy(run_dir / "trainable.safetensors", run)

    r = r2g_here("eval", "--ckpt", run, "--shards", shards, "--out", tmp_path / "eval", "--workers", "0",
                 "--no-meteor", *FAST)
    assert isinstance(r.exception, R2GError), r.output + repr(r.exception)
    assert str(r.exception).startswith(f"{damaged}: damaged shard, 1 of 4 samples readable"), str(r.exception)
    assert not (tmp_path / "eval").exists()
