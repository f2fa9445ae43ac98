"""WorkerPool: a process pool that owns its workers, one pipe and one shared-memory slot each.

The pool runs the user's handler on batches of records ("tasks") in worker
processes started with loky's process backend (fork+exec, safe in a process
that already runs librdkafka threads). It is not loky's executor: killing one
worker costs only the record that worker was running.

Data flow::

    caller thread (the consumer loop)                      worker process (one per seat)
    ---------------------------------                      ------------------------------
    submit(records) -> pending deque                        _worker_main():
         |                                                   prctl(PDEATHSIG); SIGINT, SIGTERM:
         |                                                   no-op handlers (the parent stops)
         v                                                   cloudpickle.loads(handler) once
    _dispatch(): each READY worker holds <= 2 tasks         "ready" ------------------------+
    (1 running + 1 ahead), frames sent with                                                 |
    MSG_DONTWAIT; what does not fit waits in the            for each task from the inbox:   |
    worker's out-queue (EVENT_WRITE)                          for each record:              |
         |                                                      cancel mark? stop flag?     |
         |  socketpair: (task_id, [record tuples]) ------->     slot: task, start, RUNNING  |
         |                                                      handler(record) (awaited    |
         |                                                        if it returns awaitable)  |
         |  <---- progress: (task_id, first index,              slot: DONE                  |
         |        [ok durations], failure|None, done)           failure -> sent at once     |
         |        retiring: (reason,)                           ok -> buffered, sent at the |
         |                                                        end of the task or 20 ms  |
         |  give back N? (idle worker, nothing pending) -->   inbox thread: reads the pipe  |
         |  <---- returned N (unstarted, removed) |           while a handler runs; answers |
         |        started N (already taken)                   give-back requests            |
         v                                                                                  |
    collect(timeout): epoll on sockets, process                                             |
    sentinels and a wake-up pipe:                           heartbeat thread ---------------+
      progress  -> RecordFinished events                     stamps slot[HEARTBEAT]         |
      returned  -> front of pending, same task id
      sentinel  -> drain socket, read slot:                                                 |
                   done-but-unreported -> RecordFinished      shared memory (memfd of       |
                   running             -> RecordAborted       doubles, one 16-field slot    |
                   unstarted           -> front of pending    per seat, no lock) <----------+
      retire deadlines -> SIGKILL                            parent writes: cancel marks,
      replacements -> spawner thread                         stop flag; reads: running()

    spawner thread (ONE, long-lived): starts every worker process, so that
    PR_SET_PDEATHSIG (tied to the forking *thread*) only fires when the pool,
    or the whole consumer process, goes away. It wakes collect() through a pipe
    when a process has been started; the worker becomes usable on its "ready".

The slot's ``PROGRESS`` field encodes where the worker is in its current task
with a single store: ``0`` at the start of a task, ``2*i + 1`` while record
``i`` runs, ``2*i + 2`` once record ``i`` returned. A failed record is sent to
the parent *before* its DONE store; OK records are buffered. So when a worker
dies, the parent drains the socket and then knows exactly which records of the
running task finished (reported or not), which one was running (aborted) and
which never started (requeued at the front of ``pending``, keeping their task
id so events still match the caller's bookkeeping). Reads of the slot while
the worker is alive (``running()``) use a sequence counter (seqlock).

Work stealing: a worker whose handler is stuck (a sleep, a long computation)
would keep its prefetched task while other workers idle. So when a worker is
idle and nothing is pending, the pool asks a busy worker to give back a task
queued behind its running one (one request per task; see ``_steal``). The
worker's inbox thread answers even while the main thread is inside the
handler: "returned N" (N was still queued; removed, it will not run there; the
parent puts it at the front of ``pending`` with the same id) or "started N"
(nothing changes). Both threads take tasks from the worker's queue under one
worker-local lock, so a task runs where it was sent or is given back, never
both. A worker wedged in C code holding the GIL cannot answer: nothing is
stolen from it; if it dies, a request still unanswered changes nothing, since
the death path reads the slot as usual (a task given back but not reported
never started, so it is requeued then).

Workers recycle themselves (``max_tasks_per_worker``, ``max_worker_rss_mb``)
between tasks: they report, send "retiring" and exit; a replacement starts at
once. Seats are twice the worker count so that a replacement never waits for a
slow exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import inspect
import itertools
import logging
import mmap
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from multiprocessing.context import get_spawning_popen
from types import TracebackType
from typing import Any

import cloudpickle
import psutil
from loky.backend.context import get_context

from procpool_kafka import awaitables
from procpool_kafka.awaitables import AwaitableRunner
from procpool_kafka.errors import ConfigError, HandlerLoadError
from procpool_kafka.records import HandlerError, Record, RunningRecord, exception_type_names

__all__ = [
    "HandlerError",
    "PoolEvent",
    "RecordAborted",
    "RecordFinished",
    "RunningRecord",
    "WorkerPool",
]

logger = logging.getLogger(__name__)

PREFETCH_DEPTH = 2
"""Tasks a worker holds at most: the running one and one ahead."""

_MAX_MESSAGE_CHARS = 4096
_MAX_TRACEBACK_CHARS = 64 * 1024
_OK_FLUSH_INTERVAL = 0.02
_LIVENESS_SWEEP_INTERVAL = 1.0
_RETIRE_GRACE = 5.0
_RECV_CHUNK = 64 * 1024

# Shared-memory slot layout (float64 fields; task ids are exact below 2**53).
_HEARTBEAT = 0
_SEQ = 1  # odd while the worker rewrites TASK/STARTED/PROGRESS for a new record
_TASK = 2
_PROGRESS = 3  # 0: task started; 2*i+1: record i running; 2*i+2: record i done
_STARTED = 4
_STOP = 5  # parent -> worker: exit before the next record
_CANCEL = 6  # parent -> worker: _CANCEL.._CANCEL+_CANCEL_MARKS-1 hold cancelled task ids
_CANCEL_MARKS = 4
_SLOT_FIELDS = 16  # padded to 128 bytes

# Messages worker -> parent (pickled tuples, tag first).
_MSG_READY = 0  # (tag, pid)
_MSG_LOAD_ERROR = 1  # (tag, one-line description)
_MSG_PROGRESS = 2  # (tag, task_id, first_index, ok_durations, failure | None, done)
_MSG_RETIRING = 3  # (tag, reason)
_MSG_RETURNED = 4  # (tag, task_id): answer to a give-back request; the task will not run here
_MSG_STARTED = 5  # (tag, task_id): answer to a give-back request; the task was already taken
# failure = (index, duration, type_name, message, traceback)
# done = -1 while the task goes on; else the index where it stopped (len(records)
# when complete, lower when the rest was skipped because the task was cancelled).

# Messages parent -> worker (pickled): (task_id, [record tuples]) is a task; a bare
# int N asks the worker to give task N back (answered by _MSG_RETURNED/_MSG_STARTED).

_RECALL_PATIENCE = 1.0
"""Seconds after which an unanswered give-back request (a worker wedged holding the
GIL) no longer stops the pool from asking another worker."""

#: consecutive worker deaths before ready after which start() gives up (HandlerLoadError)
_START_DEATHS_BEFORE_GIVING_UP = 3

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")

#: a Record is a NamedTuple: sent as a plain tuple (smaller than a pickled class reference)
_record_to_tuple: Callable[[Record], tuple[Any, ...]] = tuple


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class RecordFinished:
    """The handler returned (``error`` is None) or raised (``error`` set).

    ``duration`` is 0.0 when the worker died before reporting the record (it
    finished, as the shared-memory slot shows, but its timing was lost).
    """

    task_id: int
    record: Record
    error: HandlerError | None
    duration: float
    pid: int


@dataclass(frozen=True, slots=True)
class RecordAborted:
    """The worker died while running this record.

    ``cancelled``: its task had been cancelled (``cancel()``) before the worker died, so the
    caller gave that work up (a partition being revoked): it should not run it again.
    """

    task_id: int
    record: Record
    killed: bool
    reason: str
    pid: int
    cancelled: bool = False


PoolEvent = RecordFinished | RecordAborted


# --------------------------------------------------------------------------- parent-side state


class _State(enum.Enum):
    STARTING = "starting"  # process started, "ready" not received yet
    READY = "ready"  # takes tasks
    KILLING = "killing"  # kill() sent SIGKILL; its sentinel reports the death
    RETIRING = "retiring"  # recycled itself; exits on its own (SIGKILL at deadline)
    CLOSING = "closing"  # close() asked it to stop
    DEAD = "dead"  # reaped


class _PoolState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(slots=True)
class _Task:
    id: int
    records: list[Record]
    cancelled: bool = False


@dataclass(slots=True)
class _Assignment:
    """A task sent to a worker; ``reported`` records (a prefix) have an event already.

    ``recalled_at`` is set while a give-back request is outstanding (at most one);
    ``taken`` once the worker answered that it had already started the task.
    """

    task: _Task
    reported: int = 0
    recalled_at: float | None = None
    taken: bool = False


@dataclass(frozen=True, slots=True)
class _WorkerConfig:
    handler_bytes: bytes
    parent_pid: int
    heartbeat_interval: float
    max_tasks: int | None
    max_rss_mb: float | None


class _SharedSlots:
    """Shared memory of float64 fields: an unlinked memfd, mapped by the parent and each worker.

    It pickles only while loky starts a worker process (the fd is passed to the
    child), like multiprocessing's RawArray, whose reducer loky's pickler lacks.
    """

    def __init__(self, fd: int, count: int) -> None:
        self.fd = fd
        self.count = count
        self.map = mmap.mmap(fd, count * 8)
        self.view: memoryview[float] = memoryview(self.map).cast("d")
        self._close_fd = weakref.finalize(self, os.close, fd)

    @classmethod
    def create(cls, count: int) -> _SharedSlots:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("procpool-kafka-slots", os.MFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux POSIX
            with tempfile.TemporaryFile() as handle:
                fd = os.dup(handle.fileno())
        os.ftruncate(fd, count * 8)
        return cls(fd, count)

    def __reduce__(self) -> tuple[Callable[[int, int], _SharedSlots], tuple[int, int]]:
        popen = get_spawning_popen()
        if popen is None:
            raise TypeError("_SharedSlots pickles only to start a worker process")
        return (_SharedSlots._attach, (popen.duplicate_for_child(self.fd), self.count))

    @staticmethod
    def _attach(fd: int, count: int) -> _SharedSlots:
        return _SharedSlots(fd, count)

    def close(self) -> None:
        self.view.release()
        self.map.close()
        self._close_fd()


@dataclass(frozen=True, slots=True)
class _Spawned:
    process: Any  # loky LokyProcess
    sock: socket.socket


@dataclass(eq=False, slots=True)
class _Worker:
    seat: int
    process: Any
    sock: socket.socket
    sentinel: int
    pid: int
    state: _State = _State.STARTING
    assigned: deque[_Assignment] = field(default_factory=deque)
    inbuf: bytearray = field(default_factory=bytearray)
    outq: deque[memoryview] = field(default_factory=deque)
    writing: bool = False  # registered for EVENT_WRITE
    eof: bool = False
    kill_reason: str = ""
    kill_target: tuple[int, Record] | None = None  # (task id, record) the kill is meant for
    deadline: float | None = None  # SIGKILL when passed


_CONN = 0
_SENTINEL = 1
_WAKE = 2


# --------------------------------------------------------------------------- the pool


class WorkerPool:
    """A pool of worker processes running ``handler`` on batches of records.

    Not thread-safe: every method is meant to be called from one thread (the
    consumer loop). See the module docstring for the data flow.
    """

    def __init__(
        self,
        handler: Callable[[Record], object],
        workers: int,
        *,
        max_tasks_per_worker: int | None = None,
        max_worker_rss_mb: float | None = None,
        heartbeat_interval: float = 0.5,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ConfigError(f"max_tasks_per_worker must be >= 1, got {max_tasks_per_worker}")
        if max_worker_rss_mb is not None and max_worker_rss_mb <= 0:
            raise ConfigError(f"max_worker_rss_mb must be > 0, got {max_worker_rss_mb}")
        if heartbeat_interval <= 0:
            raise ConfigError(f"heartbeat_interval must be > 0, got {heartbeat_interval}")
        if not callable(handler):
            raise HandlerLoadError(f"handler {handler!r} is not callable")
        try:
            handler_bytes = cloudpickle.dumps(handler)
        except Exception as exc:
            detail = _one_line(f"{type(exc).__name__}: {exc}")
            raise HandlerLoadError(f"handler {handler!r} cannot be pickled: {detail}") from exc

        self._size = workers
        self._config = _WorkerConfig(
            handler_bytes=handler_bytes,
            parent_pid=os.getpid(),
            heartbeat_interval=heartbeat_interval,
            max_tasks=max_tasks_per_worker,
            max_rss_mb=max_worker_rss_mb,
        )
        self._ctx: Any = get_context("loky")
        self._seats = 2 * workers
        self._shm = _SharedSlots.create(self._seats * _SLOT_FIELDS)
        self._slots = self._shm.view
        self._free_seats: list[int] = list(range(self._seats - 1, -1, -1))

        self._state = _PoolState.NEW
        self._task_ids = itertools.count(1)
        self._pending: deque[_Task] = deque()
        self._outstanding = 0
        self._restarts: dict[str, int] = {"crashed": 0, "killed": 0, "recycled": 0}
        # Give-back requests sent, and their answers (for tests and debugging).
        self._give_backs: dict[str, int] = {"requested": 0, "returned": 0, "started": 0}

        self._workers: list[_Worker] = []  # not DEAD
        self._ready: list[_Worker] = []  # READY, in start order
        self._by_pid: dict[int, _Worker] = {}
        self._spawning: dict[int, Future[_Spawned]] = {}  # seat -> future
        self._start_failures = 0  # consecutive workers that died or failed before "ready"
        self._in_start = False  # inside start(): a failing worker fails start()
        self._load_error: str | None = None
        self._spawn_error: Exception | None = None  # a process could not be started in start()
        self._next_sweep = 0.0

        self._selector: selectors.BaseSelector | None = None
        self._wake_r = -1
        self._wake_w = -1
        self._spawner: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()  # interrupts spawn back-off sleeps

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> None:
        """Spawn all workers and wait until each one reports ready.

        Raises HandlerLoadError (after terminating the workers) when the
        handler cannot be loaded in a worker, TimeoutError when the workers are
        not ready within ``timeout`` seconds.
        """
        if self._state is not _PoolState.NEW:
            raise RuntimeError(f"WorkerPool.start() called on a {self._state.value} pool")
        self._state = _PoolState.RUNNING
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="procpool-spawner")
        self._in_start = True
        try:
            self._ensure_workers()
            deadline = time.monotonic() + timeout
            events: list[PoolEvent] = []
            while len(self._ready) < self._size:
                if self._load_error is not None:
                    message = self._load_error
                    self.terminate()
                    raise HandlerLoadError(message)
                if self._spawn_error is not None:
                    error = self._spawn_error
                    self.terminate()
                    raise error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.terminate()
                    raise TimeoutError(f"worker processes not ready within {timeout:g} s")
                self._step(remaining, events)
        finally:
            self._in_start = False
        self._dispatch()

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self, timeout: float = 5.0) -> None:
        """Ask workers to exit after their current record; SIGKILL what is left after ``timeout``.

        Pending tasks are discarded; events still in flight are dropped. Idempotent.
        """
        if not self._begin_close():
            return
        for worker in self._workers:
            self._slots[worker.seat * _SLOT_FIELDS + _STOP] = 1.0
            worker.outq.clear()
            with contextlib.suppress(OSError):
                worker.sock.shutdown(socket.SHUT_WR)  # EOF for a worker waiting on recv()
            if worker.state is not _State.DEAD:
                worker.state = _State.CLOSING
        self._ready.clear()
        deadline = time.monotonic() + timeout
        discard: list[PoolEvent] = []
        while self._workers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._step(remaining, discard)
        self._kill_all()
        self._release_resources()
        self._outstanding = 0

    def _begin_close(self) -> bool:
        """Mark the pool closed; True when it has workers to stop (it was running)."""
        if self._state is _PoolState.CLOSED:
            return False
        was_running = self._state is _PoolState.RUNNING
        self._state = _PoolState.CLOSED
        if not was_running:
            self._shm.close()
            return False
        self._stop_spawning()
        self._pending.clear()
        return True

    def terminate(self) -> None:
        """SIGKILL every worker now. Idempotent."""
        if not self._begin_close():
            return
        self._ready.clear()
        self._kill_all()
        self._release_resources()
        self._outstanding = 0

    # ------------------------------------------------------------------ work

    def submit(self, records: Sequence[Record]) -> int:
        """Queue one task (a non-empty batch of records); return its id. Never blocks."""
        if self._state is _PoolState.CLOSED:
            raise RuntimeError("WorkerPool.submit() on a closed pool")
        if not records:
            raise ValueError("submit() needs at least one record")
        task = _Task(next(self._task_ids), list(records))
        self._pending.append(task)
        self._outstanding += len(task.records)
        if self._ready:
            self._dispatch()
        return task.id

    def cancel(self, predicate: Callable[[Record], bool]) -> int:
        """Drop unstarted records matching ``predicate``; return how many (best effort).

        Pending tasks lose their matching records. A task already sent to a
        worker is cancelled as a whole (its unstarted records are skipped by the
        worker) when every one of its records matches; a task that matches only
        in part is left alone. The record a worker is running is never affected (if its
        worker dies, its RecordAborted says ``cancelled``). Dropped records produce no event.
        """
        dropped = 0
        kept: deque[_Task] = deque()
        for task in self._pending:
            remaining = [record for record in task.records if not predicate(record)]
            dropped += len(task.records) - len(remaining)
            if remaining:
                task.records = remaining
                kept.append(task)
        self._pending = kept
        self._outstanding -= dropped

        for worker in self._workers:
            if worker.state is _State.DEAD:
                continue
            base = worker.seat * _SLOT_FIELDS
            for assignment in worker.assigned:
                task = assignment.task
                if task.cancelled or not all(predicate(r) for r in task.records):
                    continue
                if not self._mark_cancelled(worker, task.id):
                    continue
                task.cancelled = True
                # Best-effort count: the worker skips what it has not started when it looks.
                first_unstarted = assignment.reported
                slots = self._slots
                if slots[base + _TASK] == task.id:
                    progress = int(slots[base + _PROGRESS])
                    first_unstarted = max(first_unstarted, (progress + 1) // 2)
                dropped += max(0, len(task.records) - first_unstarted)
        return dropped

    def collect(self, timeout: float) -> list[PoolEvent]:
        """Wait up to ``timeout`` seconds for events and return them (maybe empty).

        Also does the pool's housekeeping: dead workers, kill escalation,
        replacements, sending pending tasks to idle workers.
        """
        events: list[PoolEvent] = []
        if self._state is not _PoolState.RUNNING:
            return events
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            self._step(max(0.0, remaining), events)
            if events or remaining <= 0:
                return events

    def running(self) -> list[RunningRecord]:
        """One entry per worker currently inside a handler call (read from shared memory)."""
        result: list[RunningRecord] = []
        slots = self._slots
        for worker in self._workers:
            if worker.state in (_State.STARTING, _State.DEAD) or not worker.assigned:
                continue
            base = worker.seat * _SLOT_FIELDS
            for _ in range(100):
                seq = slots[base + _SEQ]
                task_id = slots[base + _TASK]
                progress = int(slots[base + _PROGRESS])
                started = slots[base + _STARTED]
                heartbeat = slots[base + _HEARTBEAT]
                if seq == slots[base + _SEQ] and int(seq) % 2 == 0:
                    break
            else:
                continue
            if progress % 2 == 0:
                continue
            index = (progress - 1) // 2
            for assignment in worker.assigned:
                if assignment.task.id == task_id:
                    if assignment.reported <= index < len(assignment.task.records):
                        result.append(
                            RunningRecord(
                                pid=worker.pid,
                                task_id=assignment.task.id,
                                record=assignment.task.records[index],
                                started_at=started,
                                last_heartbeat=heartbeat,
                            )
                        )
                    break
        return result

    def kill(self, pid: int, reason: str, target: RunningRecord | None = None) -> bool:
        """SIGKILL worker ``pid`` now (workers leave SIGTERM and SIGINT to the parent).

        When it is gone, the record it was running is reported as
        RecordAborted(killed=True, reason=reason) and its unstarted records go
        to other workers. With ``target`` (what running() showed), a record the
        worker started after finishing the target is collateral: it is queued
        again, not aborted. Returns False (and does nothing) for an unknown pid
        or a worker already being killed or gone.
        """
        worker = self._by_pid.get(pid)
        if worker is None or worker.state not in (_State.READY, _State.STARTING):
            return False
        if worker.state is _State.READY:
            self._ready.remove(worker)
        worker.state = _State.KILLING
        worker.kill_reason = reason
        worker.kill_target = None if target is None else (target.task_id, target.record)
        logger.info("killing worker %d: %s", pid, reason)
        _signal(pid, signal.SIGKILL)
        return True

    def pids(self) -> list[int]:
        """Pids of the worker processes that are alive (or not yet known dead)."""
        return [worker.pid for worker in self._workers if worker.state is not _State.DEAD]

    @property
    def size(self) -> int:
        """The configured number of workers."""
        return self._size

    def outstanding(self) -> int:
        """Records submitted and not yet finished, aborted or cancelled."""
        return self._outstanding

    def restarts(self) -> dict[str, int]:
        """Worker replacements so far by reason: "crashed", "killed", "recycled"."""
        return dict(self._restarts)

    def busy_task_ids(self) -> set[int]:
        """Ids of tasks with records not yet reported: pending, or held by a worker (except
        cancelled ones the worker has not reached, which it will skip).

        A worker takes its tasks in the order they were sent and reports each one
        (``done``) before it takes the next, so a held task up to the one in the
        worker's slot has been reached: busy until its report is read, cancelled or not.
        """
        busy = {task.id for task in self._pending}
        slots = self._slots
        for worker in self._workers:
            current = slots[worker.seat * _SLOT_FIELDS + _TASK] if slots is not None else -1
            held = [assignment.task for assignment in worker.assigned]
            reached = next((i for i, task in enumerate(held) if task.id == current), -1)
            for position, task in enumerate(held):
                if position <= reached or not task.cancelled:
                    busy.add(task.id)
        return busy

    # ------------------------------------------------------------------ event loop

    def _step(self, timeout: float, events: list[PoolEvent]) -> None:
        """One round: wait for readiness (at most ``timeout``), handle it, dispatch."""
        selector = self._selector
        assert selector is not None
        now = time.monotonic()
        for worker in self._workers:
            if worker.deadline is not None:
                timeout = min(timeout, max(0.0, worker.deadline - now))
        for key, mask in selector.select(timeout):
            kind, worker = key.data
            if kind == _CONN:
                if worker.state is _State.DEAD:
                    continue
                if mask & selectors.EVENT_READ:
                    self._read(worker, events)
                if mask & selectors.EVENT_WRITE and worker.state is not _State.DEAD:
                    self._flush(worker)
            elif kind == _SENTINEL:
                if worker.state is not _State.DEAD:
                    self._on_exit(worker, events)
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                self._integrate_spawned()
        self._housekeeping(events)
        if self._ready:
            if self._pending:
                self._dispatch()
            if not self._pending:
                self._steal()

    def _housekeeping(self, events: list[PoolEvent]) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.deadline is not None and now >= worker.deadline:
                logger.warning("worker %d still alive after its deadline: SIGKILL", worker.pid)
                worker.deadline = None
                _signal(worker.pid, signal.SIGKILL)
        if now >= self._next_sweep:
            # Defence in depth: the sentinel does not fire while a grandchild holds its fd.
            self._next_sweep = now + _LIVENESS_SWEEP_INTERVAL
            for worker in list(self._workers):
                if worker.state is not _State.DEAD and not worker.process.is_alive():
                    self._on_exit(worker, events)
        if self._state is _PoolState.RUNNING:
            if self._spawning:
                self._integrate_spawned()
            self._ensure_workers()

    # ------------------------------------------------------------------ worker messages

    def _read(self, worker: _Worker, events: list[PoolEvent]) -> None:
        try:
            data = worker.sock.recv(_RECV_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._on_eof(worker)
            return
        self._feed(worker, data, events)

    def _feed(self, worker: _Worker, data: bytes, events: list[PoolEvent]) -> None:
        buf = worker.inbuf
        buf += data
        size = len(buf)
        pos = 0
        while True:
            start, end = _frame_at(buf, pos, size)
            if end > size:
                break
            with memoryview(buf) as view:
                message = pickle.loads(view[start:end])
            pos = end
            self._on_message(worker, message, events)
            if worker.state is _State.DEAD:
                return
        if pos:
            del buf[:pos]

    def _on_message(
        self, worker: _Worker, message: tuple[Any, ...], events: list[PoolEvent]
    ) -> None:
        tag = message[0]
        if tag == _MSG_PROGRESS:
            self._on_progress(worker, message, events)
        elif tag == _MSG_READY:
            self._start_failures = 0
            if worker.state is _State.STARTING:
                worker.state = _State.READY
                self._ready.append(worker)
                logger.debug("worker %d ready (seat %d)", worker.pid, worker.seat)
        elif tag == _MSG_RETURNED:
            self._on_returned(worker, message[1])
        elif tag == _MSG_STARTED:
            self._on_started(worker, message[1])
        elif tag == _MSG_RETIRING:
            self._on_retiring(worker, message[1])
        elif tag == _MSG_LOAD_ERROR:
            description: str = message[1]
            logger.error("worker %d cannot load the handler: %s", worker.pid, description)
            if self._in_start and self._load_error is None:
                self._load_error = f"handler cannot be loaded in a worker process: {description}"
        else:
            logger.error("unknown message from worker %d: %r", worker.pid, message)

    def _on_progress(
        self, worker: _Worker, message: tuple[Any, ...], events: list[PoolEvent]
    ) -> None:
        task_id: int
        first: int
        durations: list[float]
        failure: tuple[int, float, str, str, str] | None
        done: int
        _, task_id, first, durations, failure, done = message
        assignment: _Assignment | None = None
        for candidate in worker.assigned:  # not _find(): the hot path
            if candidate.task.id == task_id:
                assignment = candidate
                break
        if assignment is None:
            logger.error("worker %d reported unknown task %d", worker.pid, task_id)
            return
        records = assignment.task.records
        pid = worker.pid
        index = first
        for duration in durations:
            events.append(RecordFinished(task_id, records[index], None, duration, pid))
            index += 1
        if failure is not None:
            index, duration, type_names, text, trace = failure
            error = HandlerError(type_names[0], text, trace, tuple(type_names))
            events.append(RecordFinished(task_id, records[index], error, duration, pid))
            index += 1
        self._outstanding -= index - assignment.reported
        assignment.reported = index
        if done >= 0:
            self._outstanding -= len(records) - index  # skipped: the task was cancelled
            worker.assigned.remove(assignment)

    def _on_returned(self, worker: _Worker, task_id: int) -> None:
        """The worker gave task ``task_id`` back unstarted: it goes to the front of pending."""
        assignment = _find(worker, task_id)
        if assignment is None or assignment.recalled_at is None:
            # Requeued already (the worker retired before it answered): nothing to do.
            return
        self._give_backs["returned"] += 1
        worker.assigned.remove(assignment)
        task = assignment.task
        if assignment.reported:  # cannot happen (it never started); keep the accounting exact
            task = _Task(task.id, task.records[assignment.reported :], task.cancelled)
        if task.cancelled:
            self._outstanding -= len(task.records)  # dropped, as the worker would have
        else:
            self._pending.appendleft(task)  # same id: events still match

    def _on_started(self, worker: _Worker, task_id: int) -> None:
        """The worker had already taken task ``task_id``: it stays there; never ask again."""
        assignment = _find(worker, task_id)
        self._give_backs["started"] += 1
        if assignment is not None:
            assignment.recalled_at = None
            assignment.taken = True

    def _on_retiring(self, worker: _Worker, reason: str) -> None:
        if worker.state is not _State.READY:
            return
        logger.info("worker %d recycles itself: %s", worker.pid, reason)
        self._ready.remove(worker)
        worker.state = _State.RETIRING
        worker.deadline = time.monotonic() + _RETIRE_GRACE
        worker.outq.clear()
        self._requeue_unstarted(worker, [])
        self._restarts["recycled"] += 1
        self._ensure_workers()

    def _on_eof(self, worker: _Worker) -> None:
        # The worker closed its end: it is exiting; the sentinel reports the death.
        if not worker.eof:
            worker.eof = True
            assert self._selector is not None
            self._selector.unregister(worker.sock)

    # ------------------------------------------------------------------ worker death

    def _on_exit(self, worker: _Worker, events: list[PoolEvent]) -> None:
        """The worker's process exited: account for everything it held."""
        self._drain(worker, events)
        code = _exit_code(worker.process)
        reason = f"signal {_signal_name(-code)}" if code < 0 else f"exit code {code}"
        previous = worker.state
        self._forget(worker)
        if previous in (_State.RETIRING, _State.CLOSING):
            logger.debug("worker %d exited (%s)", worker.pid, reason)
            return
        killed = previous is _State.KILLING
        if previous is _State.STARTING:
            self._start_failures += 1  # slows down the next spawns (crash loop)
            # one death (an OOM kill, a stray SIGKILL) is retried; dying again and again
            # before ready means the handler's import kills the interpreter
            repeated = self._start_failures >= _START_DEATHS_BEFORE_GIVING_UP
            if self._in_start and self._load_error is None and repeated:
                self._load_error = (
                    f"worker processes died {self._start_failures} times during start-up "
                    f"(last: {worker.pid}, {reason}) before reporting ready; see their stderr"
                )
        if killed:
            reason = worker.kill_reason
            self._restarts["killed"] += 1
        else:
            logger.warning("worker %d died: %s", worker.pid, reason)
            self._restarts["crashed"] += 1
        self._abort_running(worker, killed, reason, events)
        if self._state is _PoolState.RUNNING:
            self._ensure_workers()

    def _drain(self, worker: _Worker, events: list[PoolEvent]) -> None:
        """Read whatever the dead worker wrote before dying."""
        if worker.eof:
            return
        while True:
            try:
                data = worker.sock.recv(_RECV_CHUNK, socket.MSG_DONTWAIT)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._feed(worker, data, events)

    def _abort_running(
        self, worker: _Worker, killed: bool, reason: str, events: list[PoolEvent]
    ) -> None:
        """Turn the dead worker's slot into events; requeue what it never started."""
        base = worker.seat * _SLOT_FIELDS
        slot_task = self._slots[base + _TASK]
        progress = int(self._slots[base + _PROGRESS])
        requeue: list[_Task] = []
        for assignment in worker.assigned:
            task = assignment.task
            records = task.records
            next_index = assignment.reported
            if task.id == slot_task and progress > 0:
                finished = progress // 2  # records [0, finished) returned
                for index in range(assignment.reported, finished):
                    events.append(RecordFinished(task.id, records[index], None, 0.0, worker.pid))
                    self._outstanding -= 1
                next_index = max(next_index, finished)
                if progress % 2 == 1:
                    index = (progress - 1) // 2
                    if index >= assignment.reported and not self._collateral(
                        worker, killed, task.id, records[index]
                    ):
                        events.append(
                            RecordAborted(
                                task.id, records[index], killed, reason, worker.pid, task.cancelled
                            )
                        )
                        self._outstanding -= 1
                        next_index = max(next_index, index + 1)
                    elif index < assignment.reported:
                        next_index = max(next_index, index + 1)
            rest = records[next_index:]
            if not rest:
                continue
            if task.cancelled:
                self._outstanding -= len(rest)
            else:
                requeue.append(_Task(task.id, rest))
        worker.assigned.clear()
        self._pending.extendleft(reversed(requeue))

    @staticmethod
    def _collateral(worker: _Worker, killed: bool, task_id: int, record: Record) -> bool:
        """Killed for one record while running another (it moved on before the signal)."""
        target = worker.kill_target
        if not killed or target is None:
            return False
        return target[0] != task_id or target[1] is not record

    def _requeue_unstarted(self, worker: _Worker, requeue: list[_Task]) -> None:
        for assignment in worker.assigned:
            rest = assignment.task.records[assignment.reported :]
            if not rest:
                continue
            if assignment.task.cancelled:
                self._outstanding -= len(rest)
            else:
                requeue.append(_Task(assignment.task.id, rest))
        worker.assigned.clear()
        self._pending.extendleft(reversed(requeue))

    def _forget(self, worker: _Worker) -> None:
        selector = self._selector
        assert selector is not None
        if worker.state is _State.READY and worker in self._ready:
            self._ready.remove(worker)
        worker.state = _State.DEAD
        if not worker.eof:
            selector.unregister(worker.sock)
        selector.unregister(worker.sentinel)
        worker.sock.close()
        self._workers.remove(worker)
        self._by_pid.pop(worker.pid, None)
        self._free_seats.append(worker.seat)

    # ------------------------------------------------------------------ spawning

    def _active_count(self) -> int:
        active = len(self._spawning)
        for worker in self._workers:
            if worker.state in (_State.STARTING, _State.READY, _State.KILLING):
                active += 1
        return active

    def _ensure_workers(self) -> None:
        """Start workers until ``size`` are starting, ready or being killed."""
        if self._state is not _PoolState.RUNNING:
            return
        if self._load_error is not None or self._spawn_error is not None:
            return
        spawner = self._spawner
        assert spawner is not None
        missing = self._size - self._active_count()
        while missing > 0 and self._free_seats:
            seat = self._free_seats.pop()
            delay = 0.0
            if self._start_failures:
                delay = min(5.0, 0.2 * 2 ** (self._start_failures - 1))
            base = seat * _SLOT_FIELDS
            for index in range(_SLOT_FIELDS):
                self._slots[base + index] = 0.0
            for index in range(_CANCEL_MARKS):
                self._slots[base + _CANCEL + index] = -1.0
            self._slots[base + _TASK] = -1.0
            future = spawner.submit(self._spawn, seat, delay)
            future.add_done_callback(self._wake)  # runs once the result is set
            self._spawning[seat] = future
            missing -= 1

    def _spawn(self, seat: int, delay: float) -> _Spawned:
        """Runs on the spawner thread: start one worker process."""
        if delay and self._stopping.wait(delay):
            raise RuntimeError("pool closing")
        parent_conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main,
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
        return _Spawned(process, sock)

    def _wake(self, _future: Future[_Spawned]) -> None:
        """Wake collect() up: a spawn finished (called on the spawner thread)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _integrate_spawned(self) -> None:
        selector = self._selector
        assert selector is not None
        for seat, future in list(self._spawning.items()):
            if not future.done():
                continue
            del self._spawning[seat]
            try:
                spawned = future.result()
            except Exception as exc:
                self._free_seats.append(seat)
                if self._state is _PoolState.RUNNING:
                    logger.error("cannot start a worker process: %s", exc)
                    self._start_failures += 1
                    if self._in_start and self._spawn_error is None:
                        self._spawn_error = exc
                continue
            process = spawned.process
            worker = _Worker(
                seat=seat,
                process=process,
                sock=spawned.sock,
                sentinel=process.sentinel,
                pid=process.pid,
            )
            self._workers.append(worker)
            self._by_pid[worker.pid] = worker
            selector.register(worker.sock, selectors.EVENT_READ, (_CONN, worker))
            selector.register(worker.sentinel, selectors.EVENT_READ, (_SENTINEL, worker))
            if self._state is not _PoolState.RUNNING:
                worker.state = _State.CLOSING
                self._slots[seat * _SLOT_FIELDS + _STOP] = 1.0
                with contextlib.suppress(OSError):
                    worker.sock.shutdown(socket.SHUT_WR)

    def _stop_spawning(self) -> None:
        """Cancel queued spawns and take over the processes already started.

        The spawner thread itself must live until every worker is gone: its
        exit SIGKILLs the workers it started (PR_SET_PDEATHSIG).
        """
        self._stopping.set()
        for future in self._spawning.values():
            future.cancel()
        futures_wait(list(self._spawning.values()), timeout=30.0)
        self._integrate_spawned()
        self._spawning.clear()

    def _kill_all(self) -> None:
        for worker in self._workers:
            _signal(worker.pid, signal.SIGKILL)
        for worker in self._workers:
            worker.process.join(5.0)
        for worker in list(self._workers):
            self._forget(worker)

    def _release_resources(self) -> None:
        # The spawner thread exits only now, after every worker it started is gone
        # (its exit would SIGKILL them through PR_SET_PDEATHSIG anyway).
        if self._spawner is not None:
            self._spawner.shutdown(wait=True, cancel_futures=True)
            self._spawner = None
        if self._selector is not None:
            self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._shm.close()

    # ------------------------------------------------------------------ sending

    def _dispatch(self) -> None:
        """Send pending tasks: first one to each idle worker, then one ahead each."""
        pending = self._pending
        touched: list[_Worker] = []
        for level in range(PREFETCH_DEPTH):
            for worker in self._ready:
                if not pending:
                    break
                if len(worker.assigned) == level:
                    self._queue_task(worker, pending.popleft())
                    if worker not in touched:
                        touched.append(worker)
        for worker in touched:
            self._flush(worker)  # one system call for all of a worker's new tasks

    def _steal(self) -> None:
        """Take unstarted tasks back from busy workers while a worker idles and nothing pends.

        Only a task queued behind another one (never a worker's first task, nor
        the one its slot shows running) is asked for, at most one request per
        idle worker in flight. The worker answers "returned" (see _on_returned)
        or "started"; until then the task stays where it is.
        """
        idle = 0
        for worker in self._ready:
            if not worker.assigned:
                idle += 1
        if not idle:
            return
        slots = self._slots
        now = time.monotonic()
        candidates: list[tuple[float, _Worker, _Assignment]] = []
        for worker in self._ready:
            if len(worker.assigned) < 2:
                continue
            base = worker.seat * _SLOT_FIELDS
            current = slots[base + _TASK]
            for assignment in itertools.islice(worker.assigned, 1, None):
                if assignment.recalled_at is not None:
                    if now - assignment.recalled_at < _RECALL_PATIENCE:
                        idle -= 1  # a task is on its way back for one idle worker
                    continue
                if assignment.taken or assignment.task.cancelled:
                    continue
                if assignment.task.id == current:
                    continue
                candidates.append((slots[base + _STARTED], worker, assignment))
        if idle <= 0 or not candidates:
            return
        candidates.sort(key=lambda candidate: candidate[0])  # longest-running worker first
        for _, worker, assignment in candidates[:idle]:
            assignment.recalled_at = now
            self._give_backs["requested"] += 1
            self._queue_frame(worker, pickle.dumps(assignment.task.id, pickle.HIGHEST_PROTOCOL))
            self._flush(worker)

    def _queue_task(self, worker: _Worker, task: _Task) -> None:
        worker.assigned.append(_Assignment(task))
        payload = pickle.dumps(
            (task.id, [_record_to_tuple(record) for record in task.records]),
            pickle.HIGHEST_PROTOCOL,
        )
        self._queue_frame(worker, payload)

    @staticmethod
    def _queue_frame(worker: _Worker, payload: bytes) -> None:
        length = len(payload)
        if length < 0x7FFFFFFF:
            header = _HEADER.pack(length)
        else:
            header = _HEADER.pack(-1) + _LONG_HEADER.pack(length)
        if length <= 16384:
            worker.outq.append(memoryview(header + payload))
        else:
            worker.outq.append(memoryview(header))
            worker.outq.append(memoryview(payload))

    def _flush(self, worker: _Worker) -> None:
        """Write the worker's out-queue without blocking; wait for EVENT_WRITE if full."""
        outq = worker.outq
        sock = worker.sock
        try:
            while outq:
                sent = sock.sendmsg(list(itertools.islice(outq, 64)), (), socket.MSG_DONTWAIT)
                while outq and sent >= len(outq[0]):
                    sent -= len(outq.popleft())
                if sent:
                    outq[0] = outq[0][sent:]
                    break
        except BlockingIOError:
            pass
        except OSError:
            outq.clear()  # the worker is gone; its sentinel will tell
        want_write = bool(outq)
        if want_write != worker.writing and not worker.eof:
            worker.writing = want_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            assert self._selector is not None
            self._selector.modify(sock, events, (_CONN, worker))

    def _mark_cancelled(self, worker: _Worker, task_id: int) -> bool:
        """Write ``task_id`` into a free cancel mark of the worker's slot."""
        base = worker.seat * _SLOT_FIELDS + _CANCEL
        held = {float(assignment.task.id) for assignment in worker.assigned}
        for index in range(_CANCEL_MARKS):
            value = self._slots[base + index]
            if value == task_id:
                return True
            if value not in held:
                self._slots[base + index] = float(task_id)
                return True
        return False


# --------------------------------------------------------------------------- helpers


def _find(worker: _Worker, task_id: int) -> _Assignment | None:
    for assignment in worker.assigned:
        if assignment.task.id == task_id:
            return assignment
    return None


def _frame_at(buf: bytes | bytearray, pos: int, size: int) -> tuple[int, int]:
    """(body start, body end) of the frame at ``pos``; end > size when it is incomplete.

    A frame is a 4-byte big-endian length and the body, or -1 and an 8-byte length for
    bodies of 2 GiB and more (multiprocessing.connection's format).
    """
    if size - pos < 4:
        return size + 1, size + 1
    (length,) = _HEADER.unpack_from(buf, pos)
    if length != -1:
        return pos + 4, pos + 4 + length
    if size - pos < 12:
        return size + 1, size + 1
    (length,) = _LONG_HEADER.unpack_from(buf, pos + 4)
    return pos + 12, pos + 12 + length


def _signal(pid: int, signum: signal.Signals) -> None:
    try:
        process = psutil.Process(pid)
        process.send_signal(signum)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _exit_code(process: Any) -> int:
    """The exit code of a process whose sentinel fired (negative: killed by that signal)."""
    for _ in range(400):
        code = process.exitcode
        if code is not None:
            return int(code)
        # Another thread's waitpid() may have reaped it an instant ago; look again.
        process.join(0.005)
    return -int(signal.SIGKILL)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _truncate_head(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"... [{len(text) - limit} more chars]"
    return text[: max(0, limit - len(marker))] + marker


def _truncate_tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"[{len(text) - limit} chars truncated] ...\n"
    return marker + text[len(text) - max(0, limit - len(marker)) :]


_MACHINERY_FILES = (asyncio.__file__.rsplit(os.sep, 1)[0] + os.sep, awaitables.__file__)


def _handler_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without its leading frames of the worker (_run_task) and of the event loop that
    ran an async handler; all of it when nothing else is left."""
    if tb is None:
        return None
    start = tb.tb_next
    while start is not None and start.tb_frame.f_code.co_filename.startswith(_MACHINERY_FILES):
        start = start.tb_next
    return start if start is not None else tb.tb_next


def _describe(exc: BaseException) -> tuple[list[str], str, str]:
    """(type names, message, traceback) of a handler exception, as plain strings.

    The type names are the dotted names of its class and bases, most derived first.
    """
    cls = type(exc)
    type_names = exception_type_names(cls)
    type_name = type_names[0]
    try:
        message = str(exc)
    except BaseException:
        message = f"<unprintable {type_name}>"
    try:
        # Skip the worker's own frames: the traceback starts in the handler.
        lines = traceback.format_exception(cls, exc, _handler_frames(exc.__traceback__))
        trace = "".join(lines)
    except BaseException:
        trace = f"{type_name}: {message}\n(traceback unavailable)\n"
    return (
        type_names,
        _truncate_head(message, _MAX_MESSAGE_CHARS),
        _truncate_tail(trace, _MAX_TRACEBACK_CHARS),
    )


# --------------------------------------------------------------------------- worker side


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the thread that started it exits; exit if it already has."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            sys.stderr.write(f"procpool-kafka worker: prctl(PR_SET_PDEATHSIG) failed: {errno}\n")
    if os.getppid() != parent_pid:
        os._exit(0)


def _heartbeat(slot: memoryview[float], interval: float, stop: threading.Event) -> None:
    monotonic = time.monotonic
    while not stop.wait(interval):
        slot[_HEARTBEAT] = monotonic()


def _leave_to_the_parent(_signum: int, _frame: object) -> None:
    """SIGINT/SIGTERM handler of a worker: nothing; stopping is the parent's decision."""


def _worker_main(conn: Any, shm: _SharedSlots, seat: int, config: _WorkerConfig) -> None:
    """Entry point of a worker process.

    SIGINT and SIGTERM reach every process of the group (Ctrl-C, ``kill -TERM -PGID``,
    systemd, ``timeout``): the parent stops gracefully and lets running records finish, so
    workers must not die of them. A Python handler that does nothing, not SIG_IGN, which
    the handler's own subprocesses would inherit (exec resets a handler to the default).
    """
    signal.signal(signal.SIGTERM, _leave_to_the_parent)
    signal.signal(signal.SIGINT, _leave_to_the_parent)
    _die_with_parent(config.parent_pid)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError):
        _worker_loop(conn, shm, seat, config)


_Message = tuple[int, list[tuple[Any, ...]]]  # (task_id, record tuples)

_INBOX_POLL = 0.05
"""Seconds between the inbox thread's looks whether the main thread is busy (reads for it)."""

# Who reads the worker's end of the pipe (_Inbox._reader).
_NOBODY = 0
_MAIN_READS = 1
_INBOX_READS = 2


class _Inbox:
    """Worker side: the receiving end of the pipe, a local task queue and the inbox thread.

    Frames from the parent are tasks (queued in order) or give-back requests.
    The main thread takes tasks with get(); taking a task is starting it. A
    request for task N is answered at once by whichever thread reads it:
    "returned N" when N was still queued (it is removed and will not run here),
    else "started N" (the main thread took it already). Taking and removing
    happen under one lock, so a task either runs here or goes back, never both.
    Every lock is this worker's own; ``send`` serialises what the worker writes.

    Who reads the socket: the inbox thread, while the main thread is inside a
    handler; the main thread itself, while it has nothing to run. The thread
    that reads holds the reader role (``_reader``). The inbox thread looks every
    ``_INBOX_POLL`` seconds whether nobody reads (the main thread is busy) and
    takes the role; it hands it back once it delivers a task to a main thread
    that waits for one. So a give-back request is answered within about
    ``_INBOX_POLL`` even during a long handler (a pure-Python or sleeping one
    lets this thread run), while a light handler pays no thread switch per
    task: with the inbox thread as the only reader, waking the main thread for
    every task cost about 15 us of worker CPU and a third of the no-op
    throughput.
    """

    def __init__(self, fd: int, send: Callable[[tuple[Any, ...]], None]) -> None:
        self._fd = fd
        self._send = send
        self._lock = threading.Lock()  # guards every field below except _buf/_need
        self._queue: deque[_Message | None] = deque()  # None: the pipe is closed
        self._reader = _NOBODY
        self._closed = False
        self._waiting = False  # the main thread is blocked on _wakeup (while the inbox reads)
        self._wakeup = threading.Lock()  # held while nobody signals the main thread
        self._wakeup.acquire()
        self._buf = bytearray()  # owned by the thread holding the reader role
        self._need = 0  # bytes the incomplete frame at the head of _buf still lacks
        self._thread = threading.Thread(target=self._run, name="procpool-inbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def get(self) -> _Message | None:
        """The next task (started from now on), or None when the pipe is closed."""
        lock = self._lock
        queue = self._queue
        while True:
            with lock:
                if queue:
                    return queue.popleft()
                wait = self._reader != _NOBODY
                if wait:
                    self._waiting = True  # the reader will release _wakeup
                else:
                    self._reader = _MAIN_READS
            if wait:
                self._wakeup.acquire()
                continue
            self._read()  # returns False: nobody waits while this thread reads
            with lock:
                self._reader = _NOBODY
                if queue:
                    return queue.popleft()

    def _run(self) -> None:
        """The inbox thread: read while the main thread is busy (see the class docstring)."""
        lock = self._lock
        try:
            while True:
                time.sleep(_INBOX_POLL)
                with lock:
                    if self._closed:
                        return
                    if self._reader != _NOBODY:
                        continue
                    self._reader = _INBOX_READS
                while True:
                    wake = self._read()
                    with lock:
                        done = wake or self._closed
                        if done:
                            self._reader = _NOBODY
                    if wake:
                        self._wakeup.release()
                    if done:
                        break
        except BaseException as exc:
            # The parent is gone (an answer could not be sent) or the stream is
            # corrupt: the main thread must not wait for a task forever.
            if self._put([None], closed=True):
                self._wakeup.release()
            if not isinstance(exc, OSError):
                raise

    def _read(self) -> bool:
        """One blocking read; queue its tasks, answer its give-back requests (the
        parent's framing: see WorkerPool._queue_frame). True when the main thread
        waits for the tasks queued: the caller releases ``_wakeup``."""
        try:
            data = os.read(self._fd, min(max(_RECV_CHUNK, self._need), 1 << 24))
        except OSError:  # ECONNRESET: like the end of the stream
            data = b""
        if not data:
            return self._put([None], closed=True)
        buf = self._buf  # the start of a frame that did not fit in the last read
        if buf:
            buf += data
            if len(data) < self._need:
                self._need -= len(data)
                return False
            data = bytes(buf)  # one copy per frame split across reads
            buf.clear()
        self._need = 0
        size = len(data)
        pos = 0
        tasks: list[_Message | None] = []
        wake = False
        with memoryview(data) as view:
            while True:
                start, end = _frame_at(data, pos, size)
                if end > size:
                    if start <= size:  # the header is complete: the body length is known
                        self._need = end - size
                    break
                message = pickle.loads(view[start:end])
                pos = end
                if type(message) is int:  # a give-back request, after the tasks before it
                    if tasks:
                        wake |= self._put(tasks)
                        tasks = []
                    self._give_back(message)
                else:
                    tasks.append(message)
            if pos < size:
                buf += view[pos:]
        if tasks:
            wake |= self._put(tasks)
        return wake

    def _put(self, messages: list[_Message | None], closed: bool = False) -> bool:
        with self._lock:
            self._queue.extend(messages)
            self._closed |= closed
            wake = self._waiting
            self._waiting = False
        return wake

    def _give_back(self, task_id: int) -> None:
        answer: tuple[int, int] = (_MSG_STARTED, task_id)
        with self._lock:
            for index, message in enumerate(self._queue):
                if message is not None and message[0] == task_id:
                    del self._queue[index]
                    answer = (_MSG_RETURNED, task_id)
                    break
        self._send(answer)


def _sender(fd: int) -> Callable[[tuple[Any, ...]], None]:
    """send(message): one whole frame at a time (the main thread and the inbox thread
    both write). The framing of multiprocessing's Connection, which the parent reads."""
    lock = threading.Lock()
    dumps = pickle.dumps
    write = os.write

    def send(message: tuple[Any, ...]) -> None:
        payload = dumps(message, pickle.HIGHEST_PROTOCOL)
        length = len(payload)
        if length < 0x7FFFFFFF:
            data = _HEADER.pack(length) + payload
        else:  # pragma: no cover - a 2 GiB message
            data = _HEADER.pack(-1) + _LONG_HEADER.pack(length) + payload
        with lock:
            sent = write(fd, data)
            if sent < len(data):
                with memoryview(data) as view:
                    while sent < len(data):
                        sent += write(fd, view[sent:])

    return send


def _worker_loop(conn: Any, shm: _SharedSlots, seat: int, config: _WorkerConfig) -> None:
    base = seat * _SLOT_FIELDS
    slot = shm.view[base : base + _SLOT_FIELDS]
    slot[_HEARTBEAT] = time.monotonic()
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat,
        args=(slot, config.heartbeat_interval, stop),
        name="procpool-heartbeat",
        daemon=True,
    )
    beat.start()

    try:
        handler = cloudpickle.loads(config.handler_bytes)
        if not callable(handler):
            raise TypeError(f"{handler!r} is not callable")
    except BaseException as exc:
        conn.send((_MSG_LOAD_ERROR, _one_line(f"{type(exc).__name__}: {exc}")))
        return

    send = _sender(conn.fileno())
    inbox = _Inbox(conn.fileno(), send)
    send((_MSG_READY, os.getpid()))
    inbox.start()

    rss_limit = None if config.max_rss_mb is None else config.max_rss_mb * 1024 * 1024
    me = psutil.Process() if rss_limit is not None else None
    tasks_done = 0
    awaiter = AwaitableRunner()  # async handlers: one event loop per worker, made on first use
    try:
        while True:
            message = inbox.get()
            if message is None:
                break
            if not _run_task(send, slot, handler, awaiter, message):
                break
            tasks_done += 1
            retire = ""
            if config.max_tasks is not None and tasks_done >= config.max_tasks:
                retire = f"handled {tasks_done} tasks (max_tasks_per_worker)"
            elif me is not None and rss_limit is not None:
                rss = me.memory_info().rss
                if rss > rss_limit:
                    retire = f"rss {rss / 2**20:.0f} MiB > max_worker_rss_mb {config.max_rss_mb:g}"
            if retire:
                send((_MSG_RETIRING, retire))
                break
    finally:
        awaiter.close()
        stop.set()


def _run_task(
    send: Callable[[tuple[Any, ...]], None],
    slot: memoryview[float],
    handler: Callable[[Record], object],
    awaiter: AwaitableRunner,
    task: _Message,
) -> bool:
    """Run one task; False when the pool asked this worker to stop.

    A handler's awaitable result (an ``async def`` handler) is run to completion first.
    """
    task_id, raw_records = task
    monotonic = time.monotonic
    isawaitable = inspect.isawaitable
    task_mark = float(task_id)
    count = len(raw_records)
    slot[_PROGRESS] = 0.0
    first = 0  # index of the first record in ``oks``
    oks: list[float] = []
    last_flush = monotonic()
    for index, raw in enumerate(raw_records):
        if slot[_STOP]:
            return False
        if task_mark in (slot[_CANCEL], slot[_CANCEL + 1], slot[_CANCEL + 2], slot[_CANCEL + 3]):
            send((_MSG_PROGRESS, task_id, first, oks, None, index))
            return True
        record = Record(*raw)
        slot[_SEQ] += 1.0
        slot[_TASK] = task_mark
        started = monotonic()
        slot[_STARTED] = started
        slot[_PROGRESS] = 2.0 * index + 1.0
        slot[_SEQ] += 1.0
        try:
            result = handler(record)
            if result is not None and isawaitable(result):
                awaiter.run(result)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            ended = monotonic()
            type_names, text, trace = _describe(exc)
            done = count if index == count - 1 else -1
            failure = (index, ended - started, type_names, text, trace)
            send((_MSG_PROGRESS, task_id, first, oks, failure, done))
            slot[_PROGRESS] = 2.0 * index + 2.0
            if done >= 0:
                return True
            first = index + 1
            oks = []
            last_flush = ended
            continue
        ended = monotonic()
        oks.append(ended - started)
        slot[_PROGRESS] = 2.0 * index + 2.0
        if ended - last_flush >= _OK_FLUSH_INTERVAL and index < count - 1:
            send((_MSG_PROGRESS, task_id, first, oks, None, -1))
            first = index + 1
            oks = []
            last_flush = ended
    send((_MSG_PROGRESS, task_id, first, oks, None, count))
    return True
