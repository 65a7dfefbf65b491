"""Batched decoding: study limits, order, and references carried through (with a stand-in model)."""

import torch

from r2g.config import GenerateConfig
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
