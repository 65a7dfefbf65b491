"""Batched decoding: study limits, order, references carried through, one batch held at a time, and ranks that
step together (with a stand-in model)."""

import os

import torch
import torch.multiprocessing as mp

from r2g.config import GenerateConfig
from r2g.dist import free_port
from r2g.eval.decode import decode, per_rank_limit


class EchoModel:
    """Generates 'report for <first pixel>' so each prediction can be traced back to its study."""

    def generate(self, images, view_mask, gen, synced_gpus=False):
        assert images.shape[0] == view_mask.shape[0]
        return [f"report for {int(x)}" for x in images[:, 0, 0, 0, 0]]


def batches(n_studies: int, size: int):
    for start in range(0, n_studies, size):
        ids = list(range(start, min(start + size, n_studies)))
        yield {
            "ids": [f"s{i:02d}" for i in ids],
            "images": torch.tensor(ids, dtype=torch.float32).view(-1, 1, 1, 1, 1).expand(-1, 1, 3, 2, 2).clone(),
            "view_mask": torch.ones(len(ids), 1, dtype=torch.bool),
            "reports": [f"ref {i}" for i in ids],
            "labels": [None] * len(ids),
        }


def test_max_samples_counts_studies_not_batches():
    rows = decode(EchoModel(), batches(10, 3), GenerateConfig(), torch.device("cpu"), torch.float32, max_samples=4)
    assert [r["id"] for r in rows] == ["s00", "s01", "s02", "s03"]
    assert rows[3] == {"id": "s03", "prediction": "report for 3", "reference": "ref 3"}


def test_all_studies_when_unlimited():
    calls = []
    rows = decode(EchoModel(), batches(7, 3), GenerateConfig(), torch.device("cpu"), torch.float32, on_batch=calls.append)
    assert len(rows) == 7 and calls == [3, 3, 1]
    assert all(r["prediction"] == f"report for {int(r['id'][1:])}" for r in rows)


def test_per_rank_limit_covers_the_total():
    assert per_rank_limit(0, 4) == 0  # no limit
    assert per_rank_limit(150, 1) == 150
    assert per_rank_limit(150, 4) == 38 and 4 * 38 >= 150 > 4 * 37
    assert per_rank_limit(3, 8) == 1


def test_each_batch_is_decoded_as_it_arrives_with_its_view_mask_on_the_cpu():
    """A rank holds one batch of images at a time (not its whole share), and the mask reaches the model on the
    CPU, where checking it costs no device sync."""
    drawn = []

    class Watching(EchoModel):
        def generate(self, images, view_mask, gen, synced_gpus=False):
            assert view_mask.device.type == "cpu"
            seen.append(len(drawn))
            return super().generate(images, view_mask, gen, synced_gpus)

    def stream():
        for batch in batches(7, 3):
            drawn.append(batch)
            yield batch

    seen: list[int] = []
    rows = decode(Watching(), stream(), GenerateConfig(), torch.device("cpu"), torch.float32)
    assert len(rows) == 7 and seen == [1, 2, 3]  # the k-th generate call comes before the (k+1)-th batch is read


class CollectiveModel(EchoModel):
    """Stands in for a ZeRO-3 model: every generate call is a collective, so a rank that skipped one would hang."""

    calls = 0

    def generate(self, images, view_mask, gen, synced_gpus=False):
        assert synced_gpus
        torch.distributed.all_reduce(torch.ones(1))
        CollectiveModel.calls += 1
        return super().generate(images, view_mask, gen, synced_gpus)


def _synced_worker(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # Rank 0 reads 3 batches (7 studies), rank 1 one (2): rank 1 repeats its batch twice and drops the output.
        mine = batches(7, 3) if rank == 0 else ({**b, "ids": [f"t{i}" for i in b["ids"]]} for b in batches(2, 3))
        rows = decode(CollectiveModel(), mine, GenerateConfig(), torch.device("cpu"), torch.float32,
                      distributed=True, synced=True)
        assert CollectiveModel.calls == 3
        assert [r["id"] for r in rows] == [f"s{i:02d}" for i in range(7)] + ["ts00", "ts01"]
    finally:
        torch.distributed.destroy_process_group()


def test_synced_ranks_with_fewer_batches_step_with_the_others():
    mp.spawn(_synced_worker, args=(2, free_port()), nprocs=2)
