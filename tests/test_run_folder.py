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
    assert resumed_changes(tmp_path, same, HASH, 1) == {}  # --resume itself is no change

    longer = _run(tmp_path, max_steps=8, val_every=2, resume=True)
    changes = resumed_changes(tmp_path, longer, HASH, 1)
    assert changes == {"train.max_steps": [4, 8], "train.val_every": [0, 2]}
    record_resume(tmp_path, longer, changes, step=4, world=1)
    saved, meta = RunConfig.load_record(tmp_path / RECORD)
    assert saved.train.max_steps == 8 and meta["llm_config_sha256"] == HASH
    assert meta["changes"] == [{"step": 4, "settings": {"train.max_steps": [4, 8], "train.val_every": [0, 2]}}]

    other = RunConfig(data=same.data, model=ModelConfig(llm=same.model.llm, mode="shallow", lora_r=8),
                      train=TrainConfig(out=str(tmp_path), max_steps=4, lr=3e-4, resume=True))
    with pytest.raises(R2GError) as refused:
        resumed_changes(tmp_path, other, HASH, 1)
    message = str(refused.value)
    for named in ("--mode was 'delta', now 'shallow'", "--lora-r was 16, now 8", "--lr was 0.0001, now 0.0003"):
        assert named in message
    assert "--max-steps" in message  # what may change is listed

    with pytest.raises(R2GError, match="base LLM's config.json"):
        resumed_changes(tmp_path, same, "1" * 64, 1)


def test_a_resume_may_change_the_process_count_but_not_the_global_batch(tmp_path):
    """Two processes × 4 × 1 = 8 studies a step. On one process, --global-batch 8 keeps it (accumulating 2) and
    is taken; without it the global batch would be 4, refused naming both values and the flag that fixes it."""
    _run(tmp_path, micro_batch=4).save(tmp_path / RECORD, {"llm_config_sha256": HASH, "world": 2})
    kept = _run(tmp_path, micro_batch=4, grad_accum=2, global_batch=8, resume=True)
    changes = resumed_changes(tmp_path, kept, HASH, 1)
    assert changes == {"train.grad_accum": [1, 2], "train.global_batch": [0, 8], "processes": [2, 1]}
    record_resume(tmp_path, kept, changes, step=3, world=1)
    assert RunConfig.load_record(tmp_path / RECORD)[1]["world"] == 1

    _run(tmp_path, micro_batch=4).save(tmp_path / RECORD, {"llm_config_sha256": HASH, "world": 2})
    with pytest.raises(R2GError) as refused:
        resumed_changes(tmp_path, _run(tmp_path, micro_batch=4, resume=True), HASH, 1)
    message = str(refused.value)
    assert "global batch is 8 studies per step (2 process(es) × --micro-batch 4 × --grad-accum 1)" in message
    assert "this launch's 4 (1 × 4 × 1)" in message and "Pass --global-batch 8" in message


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

    torch.save({"world": 3, "client": {"global_step": 2}}, tag / checkpoint.WORLD_STATE)
    monkeypatch.setattr(checkpoint, "load_world_state", lambda engine, state: None)  # the weights: test_resume_world

    torch.manual_seed(0)
    assert checkpoint.resume(None, tmp_path, rank=1, world=3, seed=42) == {"global_step": 2}
    assert torch.rand(1).item() == states[1]
    with pytest.raises(R2GError, match="no RNG state for rank 2"):
        checkpoint.resume(None, tmp_path, rank=2, world=3, seed=42)


def test_on_another_process_count_each_rank_is_reseeded_from_seed_step_and_rank(tmp_path, monkeypatch):
    tag = tmp_path / "checkpoints" / "step00000002"
    tag.mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text(tag.name)
    torch.save({"world": 2, "client": {"global_step": 2}}, tag / checkpoint.WORLD_STATE)
    monkeypatch.setattr(checkpoint, "load_world_state", lambda engine, state: None)

    def draws(rank: int, seed: int = 42) -> tuple:
        torch.manual_seed(0)
        checkpoint.resume(None, tmp_path, rank=rank, world=3, seed=seed)  # no rng_rank files needed
        return random.random(), np.random.rand(), torch.rand(1).item()

    assert draws(1) == draws(1)  # reproducible
    assert len({draws(0), draws(1), draws(2), draws(1, seed=7)}) == 4  # a stream of its own per rank and seed

    (tmp_path / "checkpoints" / "step00000002" / checkpoint.WORLD_STATE).unlink()
    with pytest.raises(R2GError, match="holds no r2g_state.pt"):
        checkpoint.resume(None, tmp_path, rank=0, world=2, seed=42)
