"""The parent side of the pool: WorkerPool, the state machine of its workers and tasks.

It owns every decision about tasks and workers: what is pending, which worker holds
which task (``_Assignment``) and how far it reported, each worker's state (``_State``),
the selector over the workers' sockets, their process sentinels and the spawner's wake-up
pipe, dispatch and work stealing, and what a dead worker's slot means (events and
requeues). It reads the workers' messages (``_wire``) and their slots (``_slots``),
asks the spawner for processes (``_spawner``) and never runs user code.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import cloudpickle
import psutil

from procpool_kafka.errors import ConfigError, HandlerLoadError
from procpool_kafka.pool._events import PoolEvent, RecordAborted, RecordFinished
from procpool_kafka.pool._slots import PROGRESS, STARTED, TASK, SharedSlots
from procpool_kafka.pool._spawner import Spawned, Spawner
from procpool_kafka.pool._wire import (
    RECV_CHUNK,
    Failure,
    WorkerMessage,
    decode,
    encode,
    record_to_tuple,
)
from procpool_kafka.pool._worker import WorkerConfig, one_line
from procpool_kafka.records import HandlerError, Record, RunningRecord

logger = logging.getLogger("procpool_kafka.pool")  # the name it had as one module

PREFETCH_DEPTH = 2
"""Tasks a worker holds at most: the running one and one ahead."""

_LIVENESS_SWEEP_INTERVAL = 1.0
_RETIRE_GRACE = 5.0
_GIVE_BACK_PATIENCE = 1.0
"""Seconds after which an unanswered give-back request (a worker wedged holding the
GIL) no longer stops the pool from asking another worker."""

#: consecutive worker deaths before ready after which start() gives up (HandlerLoadError)
_START_DEATHS_BEFORE_GIVING_UP = 3


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

    ``give_back_asked_at`` is set while a give-back request is outstanding (at most one);
    ``taken`` once the worker answered that it had already started the task.
    """

    task: _Task
    reported: int = 0
    give_back_asked_at: float | None = None
    taken: bool = False


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


class WorkerPool:
    """A pool of worker processes running ``handler`` on batches of records.

    Not thread-safe: every method is meant to be called from one thread (the
    consumer loop). See the docstring of procpool_kafka.pool for the data flow.
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
            detail = one_line(f"{type(exc).__name__}: {exc}")
            raise HandlerLoadError(f"handler {handler!r} cannot be pickled: {detail}") from exc

        self._size = workers
        self._config = WorkerConfig(
            handler_bytes=handler_bytes,
            parent_pid=os.getpid(),
            heartbeat_interval=heartbeat_interval,
            max_tasks=max_tasks_per_worker,
            max_rss_mb=max_worker_rss_mb,
        )
        self._seats = 2 * workers
        self._shm = SharedSlots.create(self._seats)
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
        self._spawning: dict[int, Future[Spawned]] = {}  # seat -> future
        self._start_failures = 0  # consecutive workers that died or failed before "ready"
        self._in_start = False  # inside start(): a failing worker fails start()
        self._load_error: str | None = None
        self._spawn_error: Exception | None = None  # a process could not be started in start()
        self._next_sweep = 0.0

        self._selector: selectors.BaseSelector | None = None
        self._spawner: Spawner | None = None

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
        self._spawner = Spawner(self._shm, self._config)
        self._selector.register(self._spawner.wakeup_fd, selectors.EVENT_READ, (_WAKE, None))
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
            self._shm.ask_to_stop(worker.seat)
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
            for assignment in worker.assigned:
                task = assignment.task
                if task.cancelled or not all(predicate(r) for r in task.records):
                    continue
                held = [other.task.id for other in worker.assigned]
                if not self._shm.mark_cancelled(worker.seat, task.id, held):
                    continue
                task.cancelled = True
                # Best-effort count: the worker skips what it has not started when it looks.
                first_unstarted = assignment.reported
                if self._shm.get(worker.seat, TASK) == task.id:
                    progress = int(self._shm.get(worker.seat, PROGRESS))
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
        for worker in self._workers:
            if worker.state in (_State.STARTING, _State.DEAD) or not worker.assigned:
                continue
            reading = self._shm.read_record(worker.seat)
            if reading is None:
                continue
            task_id, progress, started, heartbeat = reading
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
        RecordAborted(killed=True, reason=reason), with ``reason`` handed back as
        given (the same object: a caller's str enum comes back as itself), and its
        unstarted records go to other workers. With ``target`` (what running() showed), a record the
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
        for worker in self._workers:
            current = self._shm.get(worker.seat, TASK)
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
                    self._read_from_worker(worker, events)
                if mask & selectors.EVENT_WRITE and worker.state is not _State.DEAD:
                    self._flush(worker)
            elif kind == _SENTINEL:
                if worker.state is not _State.DEAD:
                    self._on_exit(worker, events)
            else:
                assert self._spawner is not None
                self._spawner.clear_wakeups()
                self._integrate_spawned()
        self._housekeeping(events)
        if self._ready:
            if self._pending:
                self._dispatch()
            if not self._pending:
                self._ask_for_give_backs()

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

    def _read_from_worker(self, worker: _Worker, events: list[PoolEvent]) -> None:
        """One non-blocking read of the worker's socket; its messages become events."""
        try:
            data = worker.sock.recv(RECV_CHUNK)
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
            message, end = decode(buf, pos)
            if end > size:
                break
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
        if tag == WorkerMessage.PROGRESS:
            self._on_progress(worker, message, events)
        elif tag == WorkerMessage.READY:
            self._start_failures = 0
            if worker.state is _State.STARTING:
                worker.state = _State.READY
                self._ready.append(worker)
                logger.debug("worker %d ready (seat %d)", worker.pid, worker.seat)
        elif tag == WorkerMessage.GIVEN_BACK:
            self._on_given_back(worker, message[1])
        elif tag == WorkerMessage.STARTED:
            self._on_started(worker, message[1])
        elif tag == WorkerMessage.RETIRING:
            self._on_retiring(worker, message[1])
        elif tag == WorkerMessage.LOAD_ERROR:
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
        failure: Failure | None
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

    def _on_given_back(self, worker: _Worker, task_id: int) -> None:
        """The worker gave task ``task_id`` back unstarted: it goes to the front of pending."""
        assignment = _find(worker, task_id)
        if assignment is None or assignment.give_back_asked_at is None:
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
            assignment.give_back_asked_at = None
            assignment.taken = True

    def _on_retiring(self, worker: _Worker, reason: str) -> None:
        if worker.state is not _State.READY:
            return
        logger.info("worker %d recycles itself: %s", worker.pid, reason)
        self._ready.remove(worker)
        worker.state = _State.RETIRING
        worker.deadline = time.monotonic() + _RETIRE_GRACE
        worker.outq.clear()
        self._requeue_unstarted(worker)
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
                data = worker.sock.recv(RECV_CHUNK, socket.MSG_DONTWAIT)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._feed(worker, data, events)

    def _abort_running(
        self, worker: _Worker, killed: bool, reason: str, events: list[PoolEvent]
    ) -> None:
        """Turn the dead worker's slot into events; requeue what it never started."""
        slot_task = self._shm.get(worker.seat, TASK)
        progress = int(self._shm.get(worker.seat, PROGRESS))
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
            assignment.reported = next_index  # the records before it have their event
        self._requeue_unstarted(worker)

    @staticmethod
    def _collateral(worker: _Worker, killed: bool, task_id: int, record: Record) -> bool:
        """Killed for one record while running another (it moved on before the signal)."""
        target = worker.kill_target
        if not killed or target is None:
            return False
        return target[0] != task_id or target[1] is not record

    def _requeue_unstarted(self, worker: _Worker) -> None:
        """Put the records of the worker's tasks that have no event yet at the front of
        pending (same task ids); drop those of cancelled tasks. The worker holds nothing."""
        requeue: list[_Task] = []
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
            self._shm.reset(seat)
            self._spawning[seat] = spawner.spawn(seat, delay)
            missing -= 1

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
                self._shm.ask_to_stop(seat)
                with contextlib.suppress(OSError):
                    worker.sock.shutdown(socket.SHUT_WR)

    def _stop_spawning(self) -> None:
        """Cancel queued spawns and take over the processes already started.

        The spawner thread itself must live until every worker is gone: its
        exit SIGKILLs the workers it started (PR_SET_PDEATHSIG).
        """
        assert self._spawner is not None
        self._spawner.stop()
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
            self._spawner.shutdown()
            self._spawner = None
        if self._selector is not None:
            self._selector.close()
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

    def _ask_for_give_backs(self) -> None:
        """Take unstarted tasks back from busy workers while a worker idles and nothing pends.

        Only a task queued behind another one (never a worker's first task, nor
        the one its slot shows running) is asked for, at most one request per
        idle worker in flight. The worker answers "given back" (see _on_given_back)
        or "started"; until then the task stays where it is.
        """
        idle = 0
        for worker in self._ready:
            if not worker.assigned:
                idle += 1
        if not idle:
            return
        now = time.monotonic()
        candidates: list[tuple[float, _Worker, _Assignment]] = []
        for worker in self._ready:
            if len(worker.assigned) < 2:
                continue
            current = self._shm.get(worker.seat, TASK)
            for assignment in itertools.islice(worker.assigned, 1, None):
                if assignment.give_back_asked_at is not None:
                    if now - assignment.give_back_asked_at < _GIVE_BACK_PATIENCE:
                        idle -= 1  # a task is on its way back for one idle worker
                    continue
                if assignment.taken or assignment.task.cancelled:
                    continue
                if assignment.task.id == current:
                    continue
                candidates.append((self._shm.get(worker.seat, STARTED), worker, assignment))
        if idle <= 0 or not candidates:
            return
        candidates.sort(key=lambda candidate: candidate[0])  # longest-running worker first
        for _, worker, assignment in candidates[:idle]:
            assignment.give_back_asked_at = now
            self._give_backs["requested"] += 1
            self._queue_message(worker, assignment.task.id)
            self._flush(worker)

    def _queue_task(self, worker: _Worker, task: _Task) -> None:
        worker.assigned.append(_Assignment(task))
        self._queue_message(worker, (task.id, [record_to_tuple(record) for record in task.records]))

    @staticmethod
    def _queue_message(worker: _Worker, message: object) -> None:
        """Append the frame of ``message`` to the worker's out-queue (sent by _flush)."""
        header, body = encode(message)
        if len(body) <= 16384:
            worker.outq.append(memoryview(header + body))
        else:  # not copied into one buffer
            worker.outq.append(memoryview(header))
            worker.outq.append(memoryview(body))

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


def _find(worker: _Worker, task_id: int) -> _Assignment | None:
    for assignment in worker.assigned:
        if assignment.task.id == task_id:
            return assignment
    return None


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
