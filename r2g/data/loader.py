"""Shard folder + split → batches of studies, as a WebDataset pipeline of small named stages.

    shard list ─ shuffle shards (train; same order on every rank) ─ split by worker ─ read tar samples
      ─ split by rank (every world-th sample) ─ shuffle buffer (train) ─ decode ─ to tensors ─ batch

Why split ranks per sample rather than per shard: every rank then sees the same number of samples to
within the worker count, whatever the shard count, and every sample is seen exactly once per epoch across
ranks × workers. Each rank reads every shard's bytes for that (cheap next to the Swin + LLM step).

A batch is a dict:
    ids        list[str]               study ids
    images     (B, V, 3, S, S) float   views in study order, zero-padded to V = the batch's most views
    view_mask  (B, V) bool             True where a real view sits
    reports    list[str]               cleaned reports
    labels     list[dict | None]       CheXpert labels when the annotation had them
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import webdataset as wds

from r2g.config import DataConfig
from r2g.data.shard import read_manifest
from r2g.data.transforms import image_transform, to_rgb_tensor
from r2g.errors import R2GError


def shard_paths(shards: str | Path, split: str) -> tuple[list[str], int]:
    """(paths of the split's shards, number of samples), from the folder's manifest."""
    manifest = read_manifest(shards)
    if split not in manifest["splits"] or not manifest["splits"][split]["shards"]:
        have = ", ".join(s for s, v in manifest["splits"].items() if v["shards"]) or "none"
        raise R2GError(f"{Path(shards) / 'manifest.json'}: no '{split}' shards (splits present: {have}); re-shard with that split")
    entry = manifest["splits"][split]
    paths = [str(Path(shards) / s["name"]) for s in entry["shards"]]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise R2GError(f"{missing[0]}: listed in manifest.json but missing ({len(missing)} missing); re-run `r2g shard`")
    return paths, entry["samples"]


class ShardList(wds.PipelineStage):
    """The split's shard paths; shuffled per epoch with a seed shared by all ranks, so that every rank's
    worker k reads the same shards in the same order (which the per-sample rank split relies on)."""

    def __init__(self, paths: list[str], shuffle: bool, seed: int):
        self.paths, self.shuffle, self.seed, self.epoch = paths, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def run(self) -> Iterator[dict]:
        paths = list(self.paths)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(paths)
        for path in paths:
            yield {"url": path}


class ShuffleBuffer(wds.PipelineStage):
    """webdataset's buffer shuffle with an rng seeded by (seed, epoch, rank, worker): reproducible, and
    different in every epoch, rank and worker."""

    def __init__(self, shard_list: ShardList, bufsize: int, seed: int, rank: int):
        self.shard_list, self.bufsize, self.seed, self.rank = shard_list, bufsize, seed, rank

    def run(self, samples: Iterator[dict]) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = random.Random(f"{self.seed}/{self.shard_list.epoch}/{self.rank}/{worker}")
        yield from wds.shuffle(self.bufsize, initial=min(self.bufsize, 100), rng=rng)(samples)


class SplitByRank(wds.PipelineStage):
    """Keep every `world`-th sample of this worker's stream, starting at `rank`."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def run(self, samples: Iterator[dict]) -> Iterator[dict]:
        for i, sample in enumerate(samples):
            if i % self.world == self.rank:
                yield sample


class ToStudy:
    """A decoded WebDataset sample → (id, [view tensors], report, labels). Picklable for workers."""

    def __init__(self, image_size: int, augment: bool, blank: bool = False):
        self.transform = image_transform(image_size, augment)
        self.blank = blank

    def __call__(self, sample: dict) -> dict:
        meta = sample["json"]
        views = [to_rgb_tensor(sample[name], self.transform) for name in meta["images"]]
        if self.blank:
            views = [torch.zeros_like(v) for v in views]
        return {"id": meta["id"], "views": views, "report": meta["report"], "labels": meta.get("labels")}


class Collate:
    """Studies → one batch dict (see module doc); keeps at most `max_views` views per study, in order.
    With `encode_reports` (reports, views per study) -> tensors, the batch also carries them as "text"."""

    def __init__(self, max_views: int, encode_reports: Callable[[list[str], int], dict] | None = None):
        self.max_views = max_views
        self.encode_reports = encode_reports

    def __call__(self, studies: list[dict]) -> dict:
        n_views = min(self.max_views, max(len(s["views"]) for s in studies))
        c, h, w = studies[0]["views"][0].shape
        images = torch.zeros(len(studies), n_views, c, h, w)
        view_mask = torch.zeros(len(studies), n_views, dtype=torch.bool)
        for i, study in enumerate(studies):
            for v, view in enumerate(study["views"][:n_views]):
                images[i, v] = view
                view_mask[i, v] = True
        batch = {
            "ids": [s["id"] for s in studies],
            "images": images,
            "view_mask": view_mask,
            "reports": [s["report"] for s in studies],
            "labels": [s["labels"] for s in studies],
        }
        if self.encode_reports is not None:
            batch["text"] = self.encode_reports(batch["reports"], n_views)
        return batch


def _log_and_continue(exn: Exception) -> bool:
    # A corrupt tar member should not kill a multi-hour run: warn and go on (shards are checksummed,
    # so this only happens to files damaged after sharding).
    import warnings

    warnings.warn(f"skipping a sample that could not be read: {exn!r}")
    return True


def build_pipeline(
    shards: str | Path,
    split: str,
    cfg: DataConfig,
    batch_size: int,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    encode_reports: Callable[[list[str], int], dict] | None = None,
) -> tuple[wds.DataPipeline, int]:
    """(pipeline yielding batches, samples in the split). Call `pipeline.set_epoch(e)` before each epoch.
    `encode_reports`: see `Collate`."""
    paths, n_samples = shard_paths(shards, split)
    shard_list = ShardList(paths, shuffle=train, seed=seed)
    stages = [
        shard_list,
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=_log_and_continue),
        SplitByRank(rank, world),
    ]
    if train:
        stages.append(ShuffleBuffer(shard_list, cfg.shuffle_buffer, seed, rank))
    stages += [
        wds.decode("pil", handler=_log_and_continue),
        wds.map(ToStudy(cfg.image_size, cfg.augment and train, cfg.blank_images)),
        wds.batched(batch_size, collation_fn=Collate(cfg.max_views, encode_reports), partial=True),
    ]
    pipeline = wds.DataPipeline(*stages)
    pipeline.set_epoch = shard_list.set_epoch  # one handle for the training loop
    return pipeline, n_samples


def make_loader(
    shards: str | Path,
    split: str,
    cfg: DataConfig,
    batch_size: int,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    workers: int | None = None,
    encode_reports: Callable[[list[str], int], dict] | None = None,
) -> tuple[torch.utils.data.DataLoader, wds.DataPipeline, int]:
    """(DataLoader over the pipeline, the pipeline for `set_epoch`, samples in the split). On CUDA, batches
    come in pinned memory, so the copy to the GPU can overlap compute (`.to(device, non_blocking=True)`)."""
    pipeline, n_samples = build_pipeline(shards, split, cfg, batch_size, train, seed, rank, world, encode_reports)
    workers = cfg.workers if workers is None else workers
    # Its own generator: a DataLoader iterator otherwise draws its base seed from the global torch RNG,
    # which would shift dropout masks in a resumed run against the uninterrupted one.
    loader = torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=workers, persistent_workers=False,
        generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
    )
    return loader, pipeline, n_samples


def study_images(shards: str | Path, split: str, ids: set[str]) -> dict[str, list[bytes]]:
    """The stored image bytes of the studies `ids` in a split (views in order), read straight from the tars."""
    import tarfile

    paths, _ = shard_paths(shards, split)
    found: dict[str, dict[int, bytes]] = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, rest = member.name.partition(".")
                view, _, ext = rest.partition(".")
                if key in ids and view.isdigit() and ext in ("png", "jpg"):
                    found.setdefault(key, {})[int(view)] = tar.extractfile(member).read()
    return {key: [views[v] for v in sorted(views)] for key, views in found.items()}
