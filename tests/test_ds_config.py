"""DeepSpeed config resolution: "auto" filled from the r2g config, conflicts named, edge values made valid."""

import json
from pathlib import Path

import pytest

from r2g.config import RunConfig, TrainConfig
from r2g.ds_config import (SHIPPED, fill_inference_ds_config, find_ds_config, load_inference_ds_config,
                           resolve_ds_config)
from r2g.errors import R2GError

ZERO2 = SHIPPED / "zero2.json"


def test_auto_values_come_from_the_config():
    cfg = RunConfig(train=TrainConfig(micro_batch=6, grad_accum=2, lr=3e-4, warmup_steps=10))
    ds = resolve_ds_config(ZERO2, cfg, world=4, total_steps=100, bf16=True)
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["train_batch_size"] == 48
    assert ds["optimizer"]["params"]["lr"] == 3e-4 and ds["scheduler"]["params"]["total_num_steps"] == 100
    # bf16 leaves buffers to r2g: DeepSpeed's buffer_dtype would cast the LLM's fp32 rotary frequencies too
    assert ds["bf16"]["enabled"] is True and "data_types" not in ds


def test_buffer_dtype_is_refused_for_training_and_inference(tmp_path):
    ds = json.loads((SHIPPED / "zero3.json").read_text()) | {"data_types": {"buffer_dtype": "bf16"}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    for load in (lambda: resolve_ds_config(path, RunConfig(), 1, 10, True), lambda: load_inference_ds_config(path)):
        with pytest.raises(R2GError, match=r"ds.json: data_types.buffer_dtype would cast every buffer, the LLM's fp32 rotary"):
            load()


def test_zero_warmup_becomes_one_step():
    ds = resolve_ds_config(ZERO2, RunConfig(train=TrainConfig(warmup_steps=0)), 1, 50, False)
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 1 and "data_types" not in ds


def test_conflicting_value_names_both_sides(tmp_path):
    ds = json.loads(ZERO2.read_text())
    ds["optimizer"]["params"]["lr"] = 0.1
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(R2GError, match=r"optimizer.params.lr is 0.1 but --lr gives 0.0001"):
        resolve_ds_config(path, RunConfig(), 1, 10, False)


def test_shipped_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ds_configs/ here: the default path falls back to the shipped file
    assert SHIPPED.parent.name == "r2g"  # inside the package, so a non-editable install ships them (test_packaging)
    assert find_ds_config("ds_configs/zero3.json") == find_ds_config("zero3.json") == SHIPPED / "zero3.json"
    assert find_ds_config("other/zero3.json") == Path("other/zero3.json")  # only the two spellings fall back
    assert resolve_ds_config("ds_configs/zero2.json", RunConfig(), 1, 10, False)["zero_optimization"]["stage"] == 2
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero2.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert find_ds_config("ds_configs/zero2.json") == Path("ds_configs/zero2.json")  # a local file comes first
    with pytest.raises(R2GError, match="ds_configs/zero9.json: DeepSpeed config not found"):
        resolve_ds_config("ds_configs/zero9.json", RunConfig(), 1, 10, False)


def test_an_inference_config_is_zero3_without_the_training_keys():
    ds = fill_inference_ds_config(load_inference_ds_config("zero3.json"), micro_batch=4, world=2, bf16=True)
    assert not {"optimizer", "scheduler", "gradient_clipping"} & set(ds)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 1, 8)
    assert ds["bf16"] == {"enabled": True} and "data_types" not in ds
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["memory_efficient_linear"] is False
    with pytest.raises(R2GError, match=r"zero2.json: --ds partitions the model .* needs ZeRO-3 .* has stage 2"):
        load_inference_ds_config("zero2.json")
