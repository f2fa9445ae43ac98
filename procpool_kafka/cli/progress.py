"""What a run reports: progress of a batch run on stderr (a bar on a terminal, plain lines
otherwise) and the one summary line on stdout at the end."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from procpool_kafka.metrics import RunSummary, format_rate

ProgressSource = Callable[[], tuple[int, int] | None]

BAR_WIDTH = 30
TTY_REFRESH_SECONDS = 0.5


def format_progress(done: int, total: int, elapsed: float, bar: bool) -> str:
    """``done/total``, rate and ETA, with a bar when ``bar``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    shown = min(done, total)
    fraction = shown / total if total else 1.0
    remaining = max(0, total - done)
    eta = f"{remaining / rate:.0f}s" if rate > 0 and remaining else "-"
    text = f"{shown}/{total} records ({fraction:.0%}) {rate:.0f} records/s ETA {eta}"
    if not bar:
        return f"progress: {text}"
    filled = int(BAR_WIDTH * fraction)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"


class ProgressReporter:
    """Reads ``source()`` from a daemon thread and writes progress to ``stream``."""

    def __init__(
        self, source: ProgressSource, interval: float, stream: TextIO | None = None
    ) -> None:
        self._source = source
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._interval = TTY_REFRESH_SECONDS if self._tty else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procpool-progress", daemon=True)
        self._started = time.monotonic()

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._write(final=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._write(final=False)

    def _write(self, final: bool) -> None:
        progress = self._source()
        if progress is None:
            return
        line = format_progress(*progress, time.monotonic() - self._started, bar=self._tty)
        if self._tty:
            self._stream.write("\r" + line + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def format_summary(summary: RunSummary) -> str:
    """The ``summary:`` line: counts, duration, rate and, after a batch run, how many
    partitions were committed up to their end (``committed=N/M``)."""
    end = summary.end_commit
    committed = (
        "" if end is None else f" committed={end.partitions - len(end.short)}/{end.partitions}"
    )
    return (
        f"summary: ok={summary.records_ok} retried={summary.records_retried} "
        f"dead-lettered={summary.records_dead_lettered} failed-attempts={summary.records_failed} "
        f"worker-crashes={summary.worker_crashes} duration={summary.duration_s:.1f}s "
        f"rate={format_rate(summary.records_per_s)} records/s"
        f"{committed}"
    )


def print_summary(summary: RunSummary) -> None:
    """Write the summary line to stdout (flushed: scripts read it as it comes)."""
    print(format_summary(summary), flush=True)
