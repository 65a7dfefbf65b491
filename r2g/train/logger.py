"""Run logging on rank 0: a rich progress line, a JSONL metrics log, and TensorBoard when installed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


class RunLogger:
    def __init__(self, out: Path, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.console = Console()
        if not enabled:
            return
        self.jsonl = open(out / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tb = None
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(), console=self.console,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, status="")
        self.progress.start()

    def print(self, *args) -> None:
        if self.enabled:
            self.console.print(*args, soft_wrap=True)

    def param_table(self, rows: list[tuple[str, int, int]]) -> None:
        if not self.enabled:
            return
        table = Table(title="parameters")
        for col in ("group", "trainable", "total"):
            table.add_column(col, justify="right" if col != "group" else "left")
        for group, n_train, n_total in rows:
            table.add_row(group, f"{n_train:,}", f"{n_total:,}")
        table.add_row("[bold]all", f"[bold]{sum(r[1] for r in rows):,}", f"{sum(r[2] for r in rows):,}")
        self.console.print(table)

    def log(self, step: int, record: dict, status: str | None = None) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **record}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if status is not None:
            self.progress.update(self.task, completed=step, status=status)

    def advance(self, step: int) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=step)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()
