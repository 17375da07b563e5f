"""Training progress display: a ``rich`` progress bar per epoch, or one plain line per epoch.

``verbose=0`` prints nothing, ``verbose=1`` shows a live bar (batches done, loss and metrics so
far, sequences per second, ETA), ``verbose=2`` prints one line when each epoch ends. ``rich`` is
imported only when a bar is first shown, so ``import lstmrs`` stays light.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from .callbacks import Callback

__all__ = ["ProgressBar", "format_logs"]

# Keys that are bookkeeping, not results.
_HIDDEN = {"size", "batch_loss", "grad_norm", "seconds"}
# The bar is narrow: the rate is in the epoch line and the history.
_BAR_SKIP = frozenset({"lr"})


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3) and math.isfinite(v):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)


def format_logs(logs: dict, skip: set[str] | frozenset = frozenset()) -> str:
    """``loss 0.1234 · acc 0.9100 ...`` for the scalar entries of ``logs``."""
    parts = []
    for k, v in logs.items():
        if k in _HIDDEN or k in skip or not isinstance(v, (int, float)):
            continue
        parts.append(f"{k} {_fmt(float(v))}")
    return " · ".join(parts)


class ProgressBar(Callback):
    """Shows training progress; ``fit`` adds one for ``verbose`` 1 and 2."""

    def __init__(self, verbose: int = 1, file: Any = None) -> None:
        super().__init__()
        self.verbose = int(verbose)
        self.file = file
        self._progress = None
        self._task = None
        self._seen = 0.0
        self._start = 0.0

    def on_train_begin(self, logs=None):
        if self.verbose != 1:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column

        console = Console(file=self.file or sys.stderr)
        keep = Column(no_wrap=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}", table_column=keep),
            BarColumn(bar_width=24),
            MofNCompleteColumn(table_column=keep),
            TimeElapsedColumn(table_column=keep),
            TextColumn("eta", table_column=keep),
            TimeRemainingColumn(table_column=keep),
            # Long metric lists wrap instead of squeezing the bar away.
            TextColumn("{task.fields[stats]}", table_column=Column(overflow="fold")),
            console=console,
            transient=False,
        )
        self._progress.start()

    def on_epoch_begin(self, epoch, logs=None):
        self._seen, self._start = 0.0, time.perf_counter()
        if self._progress is not None:
            epochs = self.params.get("epochs", "?")
            self._task = self._progress.add_task(
                f"Epoch {epoch + 1}/{epochs}", total=self.params.get("steps"), stats=""
            )

    def on_batch_end(self, batch, logs=None):
        logs = logs or {}
        self._seen += float(logs.get("size", 0))
        if self._progress is None or self._task is None:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        stats = f"{format_logs(logs, _BAR_SKIP)} · {self._seen / elapsed:,.0f} seq/s"
        self._progress.update(self._task, completed=batch + 1, stats=stats)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = logs.get("seconds", time.perf_counter() - self._start)
        rate = self._seen / max(seconds, 1e-9)
        if self._progress is not None and self._task is not None:
            stats = f"{format_logs(logs, _BAR_SKIP)} · {rate:,.0f} seq/s"
            self._progress.update(self._task, stats=stats)
        elif self.verbose == 2:
            epochs = self.params.get("epochs", "?")
            line = f"Epoch {epoch + 1}/{epochs} - {seconds:.2f}s - {rate:,.0f} seq/s"
            text = format_logs(logs)
            print(f"{line} - {text}" if text else line, file=self.file or sys.stdout, flush=True)

    def on_train_end(self, logs=None):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
