"""Loader: batch layout, exactly-once coverage across ranks × workers, shuffling, bad shard folders."""

import dataclasses
import json
from collections import Counter

import pytest
import torch

from r2g.config import DataConfig
from r2g.data.loader import make_loader, split_shards
from r2g.data.shard import ShardOptions, shard_dataset
from r2g.demo.toys import write_raw_dataset
from r2g.errors import R2GError

from .damage import break_header, spoil_image


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    raw = write_raw_dataset(root / "raw", per_split=(23, 4, 5), size=24)
    out = root / "shards"
    shard_dataset(raw, raw.parent / "images", out, ShardOptions("iu_xray", shard_size=3))
    return out


CFG = DataConfig(image_size=32, max_views=2, shuffle_buffer=8, workers=0)


def _loader(shards, split, cfg=CFG, workers=None, **kw):
    """(loader, pipeline, samples) of `split` in `shards`, checked as `cfg` says, read by `workers` (None: cfg's)."""
    checked = split_shards(shards, split, cfg.skip_damaged_shards)
    cfg = cfg if workers is None else dataclasses.replace(cfg, workers=workers)
    return (*make_loader(checked, cfg, **kw), checked.samples)


def _ids(shards, split, train, rank=0, world=1, workers=0, epoch=0, seed=0):
    loader, pipeline, n = _loader(shards, split, CFG, batch_size=4, train=train, seed=seed, rank=rank, world=world, workers=workers)
    pipeline.set_epoch(epoch)
    return [i for batch in loader for i in batch["ids"]], n


def test_batch_layout(shards):
    loader, _, n = _loader(shards, "train", CFG, batch_size=4, train=False)
    batch = next(iter(loader))
    assert n == 23
    assert batch["images"].shape == (4, 2, 3, 32, 32) and batch["images"].dtype == torch.float32
    # write_raw_dataset gives even-indexed studies two views: s0000 two, s0001 one
    assert batch["view_mask"].tolist()[:2] == [[True, True], [True, False]]
    assert torch.all(batch["images"][1, 1] == 0)  # the padded view is zeros
    assert batch["ids"] == ["s0000", "s0001", "s0002", "s0003"]
    assert batch["reports"][0] == "study 0 . the heart normal-sized ."
    assert batch["labels"][0]["Cardiomegaly"] == 1 and batch["labels"][1]["Cardiomegaly"] == 0
    # ImageNet-normalised: a constant grey image maps to (v/255 - mean) / std per channel
    value = (0 * 7) % 256 / 255
    assert batch["images"][0, 0, 0, 0, 0].item() == pytest.approx((value - 0.485) / 0.229, abs=1e-4)


def test_single_view_batches_have_one_view_slot(shards):
    loader, _, _ = _loader(shards, "val", CFG, batch_size=1, train=False)
    shapes = {b["ids"][0]: b["images"].shape[1] for b in loader}
    assert shapes == {"s0023": 1, "s0024": 2, "s0025": 1, "s0026": 2}


@pytest.mark.parametrize("train", [False, True])
def test_every_sample_exactly_once_across_2_ranks_x_2_workers(shards, train):
    seen = Counter()
    per_rank = []
    for rank in range(2):
        ids, n = _ids(shards, "train", train, rank=rank, world=2, workers=2, epoch=3)
        seen.update(ids)
        per_rank.append(len(ids))
    assert n == 23
    assert sorted(seen) == [f"s{i:04d}" for i in range(23)]
    assert set(seen.values()) == {1}
    assert abs(per_rank[0] - per_rank[1]) <= 2  # balanced to within the worker count


def test_train_order_is_shuffled_per_epoch_and_reproducible(shards):
    plain, _ = _ids(shards, "train", train=False)
    e0, _ = _ids(shards, "train", train=True, epoch=0)
    e0_again, _ = _ids(shards, "train", train=True, epoch=0)
    e1, _ = _ids(shards, "train", train=True, epoch=1)
    assert sorted(e0) == sorted(plain)
    assert e0 != plain and e0 != e1
    assert e0 == e0_again  # same seed and epoch, same order (resumable)
    # one GPU shuffles too: the reference implementation's single-GPU path does not
    single_gpu, _ = _ids(shards, "train", train=True, world=1, epoch=2)
    assert single_gpu != plain


def test_one_loader_carries_each_new_epoch_to_its_workers(shards):
    """The training loop keeps one loader and calls set_epoch before each epoch: the workers must read that
    epoch's order (they do because make_loader's workers are not persistent: each epoch pickles the pipeline
    anew), the same order one process reads."""
    loader, pipeline, _ = _loader(shards, "train", batch_size=4, train=True, workers=1)
    orders = []
    for epoch in (0, 1):
        pipeline.set_epoch(epoch)
        orders.append([i for batch in loader for i in batch["ids"]])
    assert orders[0] != orders[1]
    assert orders == [_ids(shards, "train", train=True, epoch=e)[0] for e in (0, 1)]


def test_eval_order_is_annotation_order(shards):
    ids, _ = _ids(shards, "test", train=False)
    assert ids == ["s0027", "s0028", "s0029", "s0030", "s0031"]


def test_missing_split_and_missing_folder(shards, tmp_path):
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["splits"].pop("val")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(R2GError, match=r"no 'val' shards \(splits present: train, test\)"):
        _loader(bad, "val", CFG, batch_size=2, train=False)
    with pytest.raises(R2GError, match="listed in manifest.json but missing"):
        _loader(bad, "train", CFG, batch_size=2, train=False)
    with pytest.raises(R2GError, match="written by `r2g shard`"):
        _loader(tmp_path / "nothing", "train", CFG, batch_size=2, train=False)


def test_loader_workers_tokenize_with_the_given_encoder(shards):
    """The training loader hands each batch's reports and view-slot count to the encoder and carries its
    tensors as batch["text"], built in the worker process, not on the training step."""
    import os

    calls = []

    def encode(reports, n_views):
        calls.append(os.getpid())
        return {"n_views": torch.tensor(n_views), "lengths": torch.tensor([len(r) for r in reports])}

    loader, _, _ = _loader(shards, "train", CFG, batch_size=4, train=False, workers=1, encode_reports=encode)
    batches = list(loader)
    assert len(batches) == 6 and calls == []  # every call ran in the worker process
    for batch in batches:
        assert batch["text"]["n_views"].item() == batch["view_mask"].shape[1]
        assert batch["text"]["lengths"].tolist() == [len(r) for r in batch["reports"]]


# ------------------------------------------------------------------------------ shards damaged after sharding
def _damaged_copy(shards, tmp_path, damage) -> "Path":
    """A copy of the shard folder with `damage(path)` applied to train-000001.tar (studies s0003..s0005)."""
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    damage(copy / "train-000001.tar")
    return copy


def _cut_in_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_second_header(path):
    break_header(path, "s0004")


def _iterate(shards, cfg=CFG, workers=0, train=True):
    loader, _, n = _loader(shards, "train", cfg, batch_size=4, train=train, workers=workers)
    return [b for b in loader], n


def test_a_shard_cut_in_half_stops_the_loader_naming_it(shards, tmp_path):
    damaged = _damaged_copy(shards, tmp_path, _cut_in_half)
    with pytest.raises(R2GError) as e:
        _loader(damaged, "train", CFG, batch_size=4, train=True)
    msg = str(e.value)
    assert f"{damaged / 'train-000001.tar'}: 1 of 3 samples readable" in msg
    assert f"r2g shard verify {damaged}" in msg and "--skip-damaged-shards" in msg


@pytest.mark.parametrize("workers", [0, 1])
def test_a_shard_that_ends_early_in_the_stream_stops_iteration_naming_it(shards, tmp_path, workers):
    """Same byte size, so only the per-shard count as it streams can tell; from a worker process the error
    keeps its own message (not the worker's traceback)."""
    damaged = _damaged_copy(shards, tmp_path, _break_second_header)
    with pytest.raises(R2GError) as e:
        _iterate(damaged, workers=workers)
    msg = str(e.value)
    assert msg.startswith(f"{damaged / 'train-000001.tar'}: damaged shard, 1 of 3 samples readable")
    assert "r2g shard verify" in msg and "Traceback" not in msg


def test_skip_damaged_shards_reads_the_rest_and_counts_the_loss(shards, tmp_path):
    from r2g.data.loader import LostSamples

    skip = dataclasses.replace(CFG, skip_damaged_shards=True)
    cut = _damaged_copy(shards, tmp_path / "cut", _cut_in_half)
    checked = split_shards(cut, "train", skip_damaged=True)
    assert checked.lost == [{"shard": str(cut / "train-000001.tar"), "expected": 3, "read": 1}]
    assert LostSamples(checked).count == 2
    batches, n = _iterate(cut, skip)
    ids = sorted(i for b in batches for i in b["ids"])
    assert n == 21 and ids == sorted({f"s{i:04d}" for i in range(23)} - {"s0004", "s0005"})
    assert not any("lost" in b for b in batches)  # known at start: nothing new in the stream

    header = _damaged_copy(shards, tmp_path / "header", _break_second_header)
    with pytest.warns(UserWarning, match="damaged shard, 1 of 3 samples readable"):
        batches, n = _iterate(header, skip)
    assert n == 23 and sum(len(b["ids"]) for b in batches) == 21
    records = [r for b in batches for r in b.get("lost", [])]
    assert records == [{"shard": str(header / "train-000001.tar"), "expected": 3, "read": 1}]
    lost = LostSamples(split_shards(header, "train", skip_damaged=True))
    assert [lost.note(r) is not None for r in records * 2] == [True, False] and lost.count == 2  # once per damage


def test_an_undecodable_sample_stops_or_is_counted(shards, tmp_path):
    damaged = _damaged_copy(shards, tmp_path, lambda path: spoil_image(path, "s0003.0.png"))
    with pytest.raises(R2GError, match=r"train-000001.tar: sample s0003 does not decode"):
        _iterate(damaged, train=False)
    with pytest.warns(UserWarning, match="sample s0003 does not decode"):
        batches, _ = _iterate(damaged, dataclasses.replace(CFG, skip_damaged_shards=True), train=False)
    assert "s0003" not in [i for b in batches for i in b["ids"]]
    assert [r["key"] for b in batches for r in b.get("lost", [])] == ["s0003"]


# ------------------------------------------------------------------------------ length-grouped batches
@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """48 train studies whose reports run from 2 to 60 words, in shards of 6."""
    import random

    root = tmp_path_factory.mktemp("varied")
    raw = write_raw_dataset(root / "raw", per_split=(48, 0, 0), size=8)
    ann = json.loads(raw.read_text())
    rng = random.Random(0)
    for entry in ann["train"]:
        entry["report"] = " ".join(["clear"] * rng.randint(2, 60)) + "."
    raw.write_text(json.dumps(ann))
    shard_dataset(raw, raw.parent / "images", root / "shards", ShardOptions("iu_xray", shard_size=6))
    return root / "shards"


GROUPED = dataclasses.replace(CFG, image_size=16, shuffle_buffer=16, group_by_length=True)
PLAIN = dataclasses.replace(GROUPED, group_by_length=False)


def _batches(shards, cfg, epoch=0, rank=0, world=1, workers=0):
    loader, pipeline, _ = _loader(shards, "train", cfg, batch_size=4, train=True, rank=rank, world=world,
                                      workers=workers)
    pipeline.set_epoch(epoch)
    return [(b["ids"], [len(r.split()) for r in b["reports"]]) for b in loader]


def _padding_share(batches) -> float:
    """Padded slots over all slots when each batch pads its reports to its longest (in words)."""
    padded = sum(max(lengths) * len(lengths) for _, lengths in batches)
    return 1 - sum(sum(lengths) for _, lengths in batches) / padded


def test_grouped_batches_hold_every_sample_once_across_2_ranks_x_2_workers(varied):
    seen = Counter(i for rank in range(2) for ids, _ in _batches(varied, GROUPED, 3, rank, 2, 2) for i in ids)
    assert sorted(seen) == [f"s{i:04d}" for i in range(48)] and set(seen.values()) == {1}


def test_grouping_is_reproducible_per_epoch_and_cuts_the_padding(varied):
    e0 = _batches(varied, GROUPED, epoch=0)
    assert e0 == _batches(varied, GROUPED, epoch=0)  # same seed and epoch: same batches (resume)
    assert [ids for ids, _ in e0] != [ids for ids, _ in _batches(varied, GROUPED, epoch=1)]
    plain = _batches(varied, PLAIN, epoch=0)
    assert sorted(i for ids, _ in e0 for i in ids) == sorted(i for ids, _ in plain for i in ids)
    assert _padding_share(e0) < 0.5 * _padding_share(plain)
    # each batch is a run of the sorted buffer, so it spans a small part of the 2..60 word range
    assert max(max(lengths) - min(lengths) for _, lengths in e0) < 30
