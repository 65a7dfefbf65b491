"""Shard folder + split → batches of studies, as a WebDataset pipeline of small named stages.

    shard list ─ shuffle shards (train; same order on every rank) ─ split by worker ─ read shards (counted
      against the manifest) ─ split by rank (every world-th sample) ─ shuffle buffer (train) ─ group by report
      length (train, `group_by_length`) ─ decode ─ to tensors ─ batch

Why split ranks per sample rather than per shard: every rank then sees the same number of samples to
within the worker count, whatever the shard count, and every sample is seen exactly once per epoch across
ranks × workers. Each rank reads every shard's bytes for that (cheap next to the Swin + LLM step).

Nothing is lost silently. A shard damaged after sharding (cut short, overwritten) yields fewer samples than
manifest.json says: the start-up check compares file sizes with the manifest, and every shard's samples are
counted as they stream. Either stops with an R2GError naming the shard, or, with `skip_damaged_shards`, reads
what is readable, warns, and counts the samples lost (`SplitShards.lost` at start, `batch["lost"]` in the stream).

Length grouping: every padded report token costs a pass through the frozen LLM, so the train stream sorts each
shuffle-buffer's worth of samples by report length, cuts it into micro-batches and shuffles those (seeded by
seed, epoch, rank and worker): batches of similar lengths, in an order that a resumed run reproduces.

A batch is a dict:
    ids        list[str]               study ids
    images     (B, V, 3, S, S) float   views in study order, zero-padded to V = the batch's most views
    view_mask  (B, V) bool             True where a real view sits
    reports    list[str]               cleaned reports
    labels     list[dict | None]       CheXpert labels when the annotation had them
    lost       list[dict]              only with skip_damaged_shards, once per damage met in the stream:
                                       {shard, expected, read} or {shard, key, error} (an undecodable sample)
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import webdataset as wds

from r2g.config import DataConfig
from r2g.data.shard import read_manifest, read_shard
from r2g.data.transforms import image_transform, to_rgb_tensor
from r2g.errors import R2GError


_FIX = "re-shard (the same `r2g shard` command rewrites damaged shards) or run `r2g shard verify {root}` to check every shard"


def _damaged_fix(root: str | Path) -> str:
    """What to do about a damaged shard: re-shard or verify, or read on past it."""
    return f"{_FIX.format(root=root)}; or pass --skip-damaged-shards to read on without the lost samples"


@dataclass(frozen=True)
class SplitShards:
    """The shards of one split, checked at start against the manifest (`split_shards`): which shards the loader
    reads, and whether it reads on past damage."""

    root: str  # the shard folder
    split: str
    skip_damaged: bool  # damage met while streaming is skipped and counted (True) or stops the run (False)
    expected: dict[str, int]  # path -> samples to read: the manifest's count, or what is readable of a damaged shard
    lost: list[dict] = field(default_factory=list)  # damaged shards read on past: {shard, expected, read}

    @property
    def paths(self) -> list[str]:
        return list(self.expected)

    @property
    def samples(self) -> int:
        return sum(self.expected.values())


def split_shards(shards: str | Path, split: str, skip_damaged: bool = False) -> SplitShards:
    """The split's shards from the folder's manifest. A shard whose size differs from the manifest's (cut short
    or overwritten after sharding) stops with an error naming it, unless `skip_damaged`: then what is readable of
    it is read and the rest is counted in `lost`. Sizes are cheap to compare; a full checksum pass is
    `r2g shard verify` (manifests written before sizes were recorded rely on the stream count alone)."""
    manifest = read_manifest(shards)
    if split not in manifest["splits"] or not manifest["splits"][split]["shards"]:
        have = ", ".join(s for s, v in manifest["splits"].items() if v["shards"]) or "none"
        raise R2GError(f"{Path(shards) / 'manifest.json'}: no '{split}' shards (splits present: {have}); re-shard with that split")
    entries = manifest["splits"][split]["shards"]
    paths = [str(Path(shards) / s["name"]) for s in entries]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing and not skip_damaged:
        raise R2GError(f"{missing[0]}: listed in manifest.json but missing ({len(missing)} missing); "
                       f"{_FIX.format(root=shards)}")
    expected, lost = {}, []
    for path, entry in zip(paths, entries):
        size = Path(path).stat().st_size if path not in missing else -1
        readable = entry["samples"]
        if size != entry.get("bytes", size):
            readable = 0 if size < 0 else sum(1 for _ in read_shard(path))
            lost.append({"shard": path, "expected": entry["samples"], "read": readable})
        if readable:
            expected[path] = readable
    if lost and not skip_damaged:
        listed = "; ".join(f"{d['shard']}: {d['read']} of {d['expected']} samples readable" for d in lost)
        raise R2GError(f"{len(lost)} shard(s) changed since sharding (size differs from manifest.json): {listed}; "
                       f"{_damaged_fix(shards)}")
    return SplitShards(str(shards), split, skip_damaged, expected, lost)


class LostSamples:
    """Samples of a split that could not be read (skip_damaged_shards), for the run's log and metrics: the
    start-up check's, then those the stream reports in `batch["lost"]`, each damage counted once however many
    epochs meet it. Every rank reads every shard, so rank 0 sees every short shard; an undecodable sample is
    seen only by the rank that reads it, so the training loop gathers the records of all ranks at each log."""

    def __init__(self, checked: SplitShards):
        self.seen: dict[tuple[str, str | None], int] = {}
        self.notes = [n for d in checked.lost if (n := self.note(d))]

    def note(self, record: dict) -> str | None:
        """The warning for a damage not seen before, else None."""
        key = (record["shard"], record.get("key"))
        if key in self.seen:
            return None
        if "key" in record:
            self.seen[key] = 1
            return f"{record['shard']}: sample {record['key']} does not decode; skipped (--skip-damaged-shards)"
        self.seen[key] = record["expected"] - record["read"]
        return (f"{record['shard']}: damaged, {record['read']} of {record['expected']} samples readable; "
                f"the rest skipped (--skip-damaged-shards)")

    @property
    def count(self) -> int:
        return sum(self.seen.values())


class ShardList(wds.PipelineStage):
    """The split's shard paths; shuffled per epoch with a seed shared by all ranks, so that every rank's
    worker k reads the same shards in the same order (which the per-sample rank split relies on)."""

    def __init__(self, paths: list[str], shuffle: bool, seed: int):
        self.paths, self.shuffle, self.seed, self.epoch = paths, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        # Set in the main process; it reaches the loader's workers only because they are started anew, from a
        # fresh pickle of the pipeline, at every epoch (make_loader: persistent_workers=False).
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
        rng = random.Random(f"{self.seed}/{self.shard_list.epoch}/{self.rank}/{_worker()}")
        yield from wds.shuffle(self.bufsize, initial=min(self.bufsize, 100), rng=rng)(samples)


def report_words(sample: dict) -> int:
    """A raw sample's report length in words: a tokenizer-free proxy for its token count."""
    return len(json.loads(sample["json"])["report"].split())


class GroupByLength(wds.PipelineStage):
    """Each run of `pool` samples (a multiple of the batch size) → sorted by report length, cut into batches,
    the full batches shuffled by an rng seeded like `ShuffleBuffer`'s. A permutation of the stream, so every
    sample still comes once; a batch then pads its reports to a similar length. A short last batch stays last,
    so the downstream `batched` cuts exactly these groups."""

    def __init__(self, shard_list: ShardList, batch_size: int, pool: int, seed: int, rank: int):
        self.shard_list, self.batch_size, self.seed, self.rank = shard_list, batch_size, seed, rank
        self.pool = max(1, pool // batch_size) * batch_size

    def run(self, samples: Iterator[dict]) -> Iterator[dict]:
        rng = random.Random(f"length/{self.seed}/{self.shard_list.epoch}/{self.rank}/{_worker()}")
        chunk: list[dict] = []
        for sample in samples:
            chunk.append(sample)
            if len(chunk) == self.pool:
                yield from self._grouped(chunk, rng)
                chunk = []
        yield from self._grouped(chunk, rng)

    def _grouped(self, chunk: list[dict], rng: random.Random) -> Iterator[dict]:
        chunk = sorted(chunk, key=report_words)  # stable: equal lengths keep their shuffled order
        batches = [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        short = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        rng.shuffle(batches)
        for batch in batches + short:
            yield from batch


def _worker() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else 0


class Damage:
    """What a damaged shard does to the stream: stop with an R2GError naming it, or (skip) warn and keep a
    record that `Collate` hands on with the next batch, so the training loop can count the samples lost.
    One object shared by the stages of a worker's pipeline copy."""

    def __init__(self, root: str | Path, skip: bool):
        self.root, self.skip, self.pending = root, skip, []

    def __call__(self, record: dict, message: str) -> None:
        if not self.skip:
            raise R2GError(f"{message}; {_damaged_fix(self.root)}")
        warnings.warn(f"{message}; skipped (skip_damaged_shards)", stacklevel=2)
        self.pending.append(record)

    def take(self) -> list[dict]:
        records, self.pending = self.pending, []
        return records


class ReadShards(wds.PipelineStage):
    """This worker's shards → their samples (raw bytes), each shard's count checked against `expected`: a
    shard that ends early was damaged after sharding (the tar reader stops quietly at a corrupt header)."""

    def __init__(self, expected: dict[str, int], damage: Damage):
        self.expected, self.damage = expected, damage

    def run(self, shards: Iterator[dict]) -> Iterator[dict]:
        for item in shards:
            path, read = item["url"], 0
            for sample in read_shard(path):
                read += 1
                yield sample
            if read != self.expected[path]:
                self.damage({"shard": path, "expected": self.expected[path], "read": read},
                            f"{path}: damaged shard, {read} of {self.expected[path]} samples readable (manifest.json)")


class Decode(wds.PipelineStage):
    """webdataset's PIL decoding, with the shard and sample named when one does not decode."""

    def __init__(self, damage: Damage):
        self.decoder, self.damage = wds.autodecode.Decoder([wds.autodecode.imagehandler("pil")]), damage

    def run(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            try:
                decoded = self.decoder(sample)
            except Exception as e:  # any decoder failure means damaged bytes
                self.damage({"shard": sample["__url__"], "key": sample["__key__"], "error": repr(e)},
                            f"{sample['__url__']}: sample {sample['__key__']} does not decode ({e})")
                continue
            yield decoded


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

    def __init__(self, max_views: int, encode_reports: Callable[[list[str], int], dict] | None = None,
                 damage: Damage | None = None):
        self.max_views = max_views
        self.encode_reports = encode_reports
        self.damage = damage

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
        if self.damage is not None and self.damage.pending:
            batch["lost"] = self.damage.take()
        return batch


def build_pipeline(checked: SplitShards, cfg: DataConfig, *, batch_size: int, train: bool, seed: int = 0,
                   rank: int = 0, world: int = 1,
                   encode_reports: Callable[[list[str], int], dict] | None = None) -> wds.DataPipeline:
    """The pipeline yielding batches of `checked` (see `make_loader`). Call `pipeline.set_epoch(e)` before each
    epoch."""
    damage = Damage(checked.root, checked.skip_damaged)
    shard_list = ShardList(checked.paths, shuffle=train, seed=seed)
    stages = [shard_list, wds.split_by_worker, ReadShards(checked.expected, damage), SplitByRank(rank, world)]
    if train:
        stages.append(ShuffleBuffer(shard_list, cfg.shuffle_buffer, seed, rank))
        if cfg.group_by_length:
            stages.append(GroupByLength(shard_list, batch_size, cfg.shuffle_buffer, seed, rank))
    stages += [
        Decode(damage),
        wds.map(ToStudy(cfg.image_size, cfg.augment and train, cfg.blank_images)),
        wds.batched(batch_size, collation_fn=Collate(cfg.max_views, encode_reports, damage), partial=True),
    ]
    pipeline = wds.DataPipeline(*stages)
    pipeline.set_epoch = shard_list.set_epoch  # one handle for the training loop
    return pipeline


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose workers' R2GErrors reach the caller with their own message: PyTorch re-raises a
    worker's exception with the worker's traceback as its message, which the CLI would print whole."""

    def __iter__(self):
        try:
            yield from super().__iter__()
        except R2GError as e:
            raise R2GError(str(e).partition(f"\n{R2GError.__module__}.{R2GError.__name__}: ")[2].strip() or str(e)) from None


def make_loader(checked: SplitShards, cfg: DataConfig, *, batch_size: int, train: bool, seed: int = 0,
                rank: int = 0, world: int = 1, encode_reports: Callable[[list[str], int], dict] | None = None,
                ) -> tuple[torch.utils.data.DataLoader, wds.DataPipeline]:
    """(DataLoader over the split, the pipeline for `set_epoch`). `checked` (`split_shards`) says which shards
    and whether damage is read past; `cfg` how samples become batches (image size, views, shuffling, grouping)
    and how many workers read them, so nothing here can contradict either. `train`: shuffle, group and augment;
    `rank` of `world`: this rank's share; `encode_reports`: see `Collate`. On CUDA, batches come in pinned
    memory, so the copy to the GPU can overlap compute (`.to(device, non_blocking=True)`)."""
    pipeline = build_pipeline(checked, cfg, batch_size=batch_size, train=train, seed=seed, rank=rank, world=world,
                              encode_reports=encode_reports)
    # persistent_workers=False is what carries the epoch to the workers: each epoch's iter() starts new workers,
    # which pickle the pipeline with the ShardList.epoch that set_epoch just wrote. Persistent workers would
    # keep their first copy and replay epoch 0's order in every epoch (tests/test_loader.py checks this).
    # Its own generator: a DataLoader iterator otherwise draws its base seed from the global torch RNG,
    # which would shift dropout masks in a resumed run against the uninterrupted one.
    loader = Loader(
        pipeline, batch_size=None, num_workers=cfg.workers, persistent_workers=False,
        generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
    )
    return loader, pipeline


def study_images(checked: SplitShards, ids: set[str]) -> dict[str, list[bytes]]:
    """The stored image bytes of the studies `ids` in a checked split (views in order), read straight from the tars."""
    import tarfile

    found: dict[str, dict[int, bytes]] = {}
    for path in checked.paths:
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, rest = member.name.partition(".")
                view, _, ext = rest.partition(".")
                if key in ids and view.isdigit() and ext in ("png", "jpg"):
                    found.setdefault(key, {})[int(view)] = tar.extractfile(member).read()
    return {key: [views[v] for v in sorted(views)] for key, views in found.items()}
