"""Spawner: the ONE long-lived thread that starts every worker process.

PR_SET_PDEATHSIG is tied to the thread that forked the worker, not to the process: a
worker started from a short-lived thread would be killed when that thread exits. So one
thread starts them all, and lives until the pool has no worker left. When a start
finishes (or fails) it wakes the pool's selector through a pipe (``wakeup_fd``); the pool
then takes the started process over (a worker becomes usable on its READY message).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from loky.backend.context import get_context

from procpool_kafka.pool._slots import SharedSlots
from procpool_kafka.pool._worker import WorkerConfig, worker_main


@dataclass(frozen=True, slots=True)
class Spawned:
    """A worker process just started, and the parent's end of its socketpair."""

    process: Any  # loky LokyProcess
    sock: socket.socket


class Spawner:
    """Starts worker processes on its own thread; one per pool, from start() to the end."""

    def __init__(self, shm: SharedSlots, config: WorkerConfig) -> None:
        self._ctx: Any = get_context("loky")
        self._shm = shm
        self._config = config
        self._stopping = threading.Event()  # interrupts back-off sleeps
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="procpool-spawner")

    @property
    def wakeup_fd(self) -> int:
        """Readable when a start has finished since the last ``clear_wakeups()``."""
        return self._wake_r

    def clear_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)

    def spawn(self, seat: int, delay: float) -> Future[Spawned]:
        """Start the worker of ``seat`` after ``delay`` seconds (a crash loop's back-off)."""
        future = self._thread.submit(self._start, seat, delay)
        future.add_done_callback(self._wake)  # runs once the result is set
        return future

    def stop(self) -> None:
        """Cut the back-off sleeps of queued starts short (they fail: the pool is closing)."""
        self._stopping.set()

    def shutdown(self) -> None:
        """End the thread; only once every worker it started is gone (its exit would
        SIGKILL them through PR_SET_PDEATHSIG anyway)."""
        self._thread.shutdown(wait=True, cancel_futures=True)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _start(self, seat: int, delay: float) -> Spawned:
        """Runs on the spawner thread: start one worker process."""
        if delay and self._stopping.wait(delay):
            raise RuntimeError("pool closing")
        parent_conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self._shm, seat, self._config),
            name=f"procpool-worker-{seat}",
            # Not daemonic, so that handlers may start processes of their own. An
            # unclosed pool does not hang interpreter exit: threading's shutdown joins
            # the spawner thread before atexit runs, and its exit SIGKILLs the workers.
            daemon=False,
        )
        process.start()
        child_conn.close()
        sock = socket.socket(fileno=os.dup(parent_conn.fileno()))
        parent_conn.close()
        return Spawned(process, sock)

    def _wake(self, _future: Future[Spawned]) -> None:
        """Wake the pool's selector up: a start finished (called on the spawner thread)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")
