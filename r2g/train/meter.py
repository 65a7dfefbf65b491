"""Throughput bookkeeping for the training log: samples/s, tokens/s and MFU over a window of steps."""

from __future__ import annotations

import time

from r2g.model.flops import FlopCounts, train_flops_per_sample


class ThroughputMeter:
    """Counts what the micro-batches of a log window carried; `read()` turns it into rates and starts a new window.

    Tokens are counted from the batch's host copy of the attention mask, so logging never waits on the GPU.
    MFU is per rank: this rank's model FLOPs over its GPU's peak (None on CPU, where no peak is known).
    """

    def __init__(self, flop_counts: FlopCounts, num_visual_tokens, world: int, peak_flops: float | None):
        self.flop_counts, self.num_visual_tokens = flop_counts, num_visual_tokens
        self.world, self.peak = world, peak_flops
        self._start()

    def _start(self) -> None:
        self.t0, self.samples, self.tokens, self.flops = time.perf_counter(), 0, 0, 0.0

    def add(self, batch: dict) -> None:
        view_mask, text = batch["view_mask"], batch["text"]
        n_studies, n_views = view_mask.shape
        self.samples += n_studies
        self.tokens += int(text["attention_mask"].sum())
        self.flops += n_studies * train_flops_per_sample(
            self.flop_counts, text["input_ids"].shape[1], self.num_visual_tokens(n_views),
            n_images=view_mask.sum().item() / n_studies,
        )

    def read(self) -> dict:
        seconds = time.perf_counter() - self.t0
        rates = {"samples_per_s": self.samples * self.world / seconds, "tokens_per_s": self.tokens * self.world / seconds}
        if self.peak:
            rates["mfu"] = self.flops / seconds / self.peak
        self._start()
        return rates
