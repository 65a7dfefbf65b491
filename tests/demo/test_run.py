"""The main job end to end at toy size: every stage runs through the real code (synthetic data, shards, tiny
LM in the prompt layout, encoder pretraining, delta alignment under DeepSpeed ZeRO-2, evaluation) for both
twins, on the demo's pinned thread count, and the result carries the paired comparison the demo prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r2g.demo.run import DemoOptions, demo_config, run_demo

pytestmark = pytest.mark.slow


def test_demo_at_toy_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the shipped DeepSpeed config is found from any folder
    # Every training and evaluation stage must run on the pinned count (1 here, so the toy run stays quick on a
    # busy machine), not on the caller's (2).
    threads_seen = {}

    def spy(module, name):
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            threads_seen[name] = torch.get_num_threads()
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)

    import r2g.demo.pretrain_vision
    import r2g.demo.tiny_lm
    import r2g.eval.run
    import r2g.train.loop

    for module, name in ((r2g.demo.tiny_lm, "train_tiny_lm"), (r2g.demo.pretrain_vision, "pretrain_vision"),
                         (r2g.train.loop, "run"), (r2g.eval.run, "evaluate")):
        spy(module, name)
    opts = DemoOptions(out=Path("demo"), studies=60, steps=2, lm_steps=2, vision_steps=2, test_studies=5, threads=1)
    logged = []
    torch.set_num_threads(2)  # the caller's count
    results = run_demo(opts, log=logged.append)
    assert torch.get_num_threads() == 2  # given back after the demo
    torch.set_num_threads(1)
    assert threads_seen == {"train_tiny_lm": 1, "pretrain_vision": 1, "run": 1, "evaluate": 1}
    assert results["threads"] == 1

    assert [m.split(" ", 1)[0] for m in logged if m[:1].isdigit()] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6", "5/6", "6/6"]
    assert set(load_file("demo/swin-pretrained.safetensors")) and Path("demo/tiny-lm/config.json").is_file()
    for run, blank in (("with-images", False), ("blank-images", True)):
        assert results[run]["studies"] == 5 and 0.0 <= results[run]["ce_micro_f1"] <= 1.0
        saved = json.loads(Path(f"demo/runs/{run}/r2g_config.json").read_text())
        assert saved["data"]["blank_images"] is blank and saved["model"]["mode"] == "delta"
        # recorded absolute, so the run folder works from any directory (`cd demo && r2g generate …`)
        assert saved["model"]["vision_weights"] == str(tmp_path / "demo" / "swin-pretrained.safetensors")
    gain = results["ce_micro_f1_gain"]  # read from `r2g compare` of the two runs
    assert gain["gain"] == pytest.approx(results["with-images"]["ce_micro_f1"] - results["blank-images"]["ce_micro_f1"])
    assert gain["low"] <= gain["gain"] <= gain["high"] and 0 < gain["p"] <= gain["p_holm"] <= 1
    assert {row["metric"] for row in results["compare"]["rows"]} >= {"BLEU_4", "METEOR", "CIDEr", "ce_micro_f1"}
    # every metric of both evaluations carries its interval
    assert set(results["with-images"]["intervals"]) >= {"BLEU_4", "METEOR", "CIDEr", "ce_micro_f1", "ce5_upos_macro_f1"}
    assert json.loads(Path("demo/demo_results.json").read_text())["ce_micro_f1_gain"] == gain
    assert demo_config(opts, "x", True).generate.repetition_penalty == 1.0


def test_image_gain_is_r2g_compare_of_the_two_runs_paired_by_id(tmp_path):
    from r2g.demo.run import image_gain
    from r2g.errors import R2GError

    ref = {"a": "the heart is enlarged .", "b": "no acute disease ."}

    def write(path, preds):
        path.write_text("".join(json.dumps({"id": i, "prediction": p, "reference": ref[i]}) + "\n"
                                for i, p in preds.items()))

    write(tmp_path / "img.jsonl", {"b": "no acute disease .", "a": "the heart is enlarged ."})  # order differs
    write(tmp_path / "blank.jsonl", {"a": "no acute disease .", "b": "no acute disease ."})
    result = image_gain(tmp_path / "img.jsonl", tmp_path / "blank.jsonl", meteor=False)
    assert result["baseline"] == str(tmp_path / "blank.jsonl")  # A = images blanked, B = sees the images
    gain = next(row for row in result["rows"] if row["metric"] == "ce_micro_f1")
    # perfect (Cardiomegaly, No Finding) vs tp 1 (No Finding), fp 1 (No Finding on a), fn 1 (Cardiomegaly on a)
    assert gain["delta"] == pytest.approx(1 - 0.5) and gain["low"] <= gain["delta"] <= gain["high"]

    write(tmp_path / "other.jsonl", {"a": "no acute disease ."})
    with pytest.raises(R2GError, match=r"do not cover the same studies: 1 only in .*blank.jsonl \(first: \['b'\]\)"):
        image_gain(tmp_path / "other.jsonl", tmp_path / "blank.jsonl", meteor=False)
