"""Progress of a batch run on stderr: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

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
