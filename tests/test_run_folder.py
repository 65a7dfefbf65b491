"""The run folder's records without training: the run record a resume checks against, the export that carries
its own validation record, and the per-rank RNG states (CUDA's too, with torch.cuda stood in for)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from r2g.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from r2g.errors import R2GError
from r2g.train import checkpoint
from r2g.train.checkpoint import (RECORD, export_trainable, exported_best, record_resume, resumed_changes,
                                  rng_state, set_rng_state)

HASH = "0" * 64


def _run(tmp_path: Path, **train) -> RunConfig:
    return RunConfig(data=DataConfig(shards=str(tmp_path / "shards")), model=ModelConfig(llm=str(tmp_path / "llm")),
                     train=TrainConfig(out=str(tmp_path), **train))


def test_the_record_is_written_atomically_with_its_meta(tmp_path):
    cfg = _run(tmp_path)
    cfg.save(tmp_path / RECORD, {"llm_config_sha256": HASH})
    saved, meta = RunConfig.load_record(tmp_path / RECORD)
    assert saved == cfg and meta == {"llm_config_sha256": HASH}
    assert [p.name for p in tmp_path.iterdir()] == [RECORD]  # no temporary file left behind


def test_a_resume_may_change_only_how_long_and_how_visibly_the_run_goes_on(tmp_path):
    _run(tmp_path, max_steps=4).save(tmp_path / RECORD, {"llm_config_sha256": HASH})
    same = _run(tmp_path, max_steps=4, resume=True)
    assert resumed_changes(tmp_path, same, HASH) == {}  # --resume itself is no change

    longer = _run(tmp_path, max_steps=8, val_every=2, resume=True)
    changes = resumed_changes(tmp_path, longer, HASH)
    assert changes == {"train.max_steps": [4, 8], "train.val_every": [0, 2]}
    record_resume(tmp_path, longer, changes, step=4)
    saved, meta = RunConfig.load_record(tmp_path / RECORD)
    assert saved.train.max_steps == 8 and meta["llm_config_sha256"] == HASH
    assert meta["changes"] == [{"step": 4, "settings": {"train.max_steps": [4, 8], "train.val_every": [0, 2]}}]

    other = RunConfig(data=same.data, model=ModelConfig(llm=same.model.llm, mode="shallow", lora_r=8),
                      train=TrainConfig(out=str(tmp_path), max_steps=4, lr=3e-4, resume=True))
    with pytest.raises(R2GError) as refused:
        resumed_changes(tmp_path, other, HASH)
    message = str(refused.value)
    for named in ("--mode was 'delta', now 'shallow'", "--lora-r was 16, now 8", "--lr was 0.0001, now 0.0003"):
        assert named in message
    assert "--max-steps" in message  # what may change is listed

    with pytest.raises(R2GError, match="base LLM's config.json"):
        resumed_changes(tmp_path, same, "1" * 64)


def test_the_export_carries_its_record_and_repairs_the_copy_beside_it(tmp_path):
    assert exported_best(tmp_path) is None
    info = {"step": 3, "metric": "bleu4_cider", "value": 0.9, "scores": {"BLEU_4": 0.8}}
    export_trainable({"mapper.weight": torch.ones(2, 2)}, tmp_path, info)
    assert exported_best(tmp_path) == info == json.loads((tmp_path / "best.json").read_text())
    # A crash between the export's rename and best.json's leaves the copy a validation behind: the export counts.
    (tmp_path / "best.json").write_text(json.dumps({**info, "step": 2, "value": 0.5}))
    assert exported_best(tmp_path) == info
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 2  # only the rank asked to repairs it
    assert exported_best(tmp_path, repair_copy=True) == info == json.loads((tmp_path / "best.json").read_text())


def test_rng_states_round_trip_including_every_gpu(monkeypatch):
    """torch.cuda stood in for by two devices' states: saved by `rng_state`, restored by `set_rng_state`."""
    gpus = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [g.clone() for g in gpus])
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append([int(s) for s in states]))

    torch.manual_seed(0)
    state = rng_state()
    assert [int(s) for s in state["cuda"]] == [1, 2]
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == drawn
    assert restored == [[1, 2]]

    # Another count of visible GPUs at the resume: this rank's own device only.
    one = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: one.append(int(s)))
    set_rng_state(state)
    assert one == [2] and restored == [[1, 2]]


def test_a_state_saved_without_cuda_leaves_cuda_as_seeded(monkeypatch):
    state = rng_state()  # this CPU: no CUDA state
    assert "cuda" not in state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("no CUDA state was saved"))
    set_rng_state(state)


def test_resume_restores_this_ranks_own_generators(tmp_path, monkeypatch):
    """Each rank reads its own rng_rank<N>.pt, not rank 0's (DeepSpeed's client state is written by rank 0)."""
    tag = tmp_path / "checkpoints" / "step00000002"
    tag.mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text(tag.name)
    states = {}
    for rank in (0, 1):
        torch.manual_seed(100 + rank)
        states[rank] = torch.rand(1).item()
        torch.manual_seed(100 + rank)
        torch.save(rng_state(), checkpoint._rng_file(tag, rank))

    class Engine:
        def load_checkpoint(self, folder, tag, load_module_strict):
            return folder, {"global_step": 2}

    torch.manual_seed(0)
    assert checkpoint.resume(Engine(), tmp_path, rank=1) == {"global_step": 2}
    assert torch.rand(1).item() == states[1]
    with pytest.raises(R2GError, match="no RNG state for rank 2"):
        checkpoint.resume(Engine(), tmp_path, rank=2)
