"""The child side of the pool: what runs in a worker process.

``worker_main`` is the process's entry point: it leaves SIGINT and SIGTERM to the parent,
dies with the thread that started it (PR_SET_PDEATHSIG), starts the heartbeat thread
(stamps the slot's HEARTBEAT), loads the handler once and says READY. Then the main thread
takes tasks from the :class:`_Inbox` in order and runs them (``_run_task``): for each
record it writes the slot (TASK, STARTED, PROGRESS under the seqlock), calls the handler
(awaiting an awaitable result) and reports PROGRESS: a failure at once, before the slot
says the record is done, OK records buffered and sent at the end of the task or every
20 ms. The inbox thread reads the pipe while a handler runs and answers give-back
requests. Between tasks the worker may recycle itself (RETIRING, then exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import cloudpickle
import psutil

from procpool_kafka import awaitables
from procpool_kafka.awaitables import AwaitableRunner
from procpool_kafka.pool._slots import (
    CANCEL,
    HEARTBEAT,
    PROGRESS,
    SEQ,
    STARTED,
    STOP,
    TASK,
    SharedSlots,
)
from procpool_kafka.pool._wire import RECV_CHUNK, Task, WorkerMessage, decode, encode
from procpool_kafka.records import Record, exception_type_names

_MAX_MESSAGE_CHARS = 4096
_MAX_TRACEBACK_CHARS = 64 * 1024
_OK_FLUSH_INTERVAL = 0.02

# The tags this side sends, as plain ints (see _wire).
_TAG_READY = WorkerMessage.READY.value
_TAG_LOAD_ERROR = WorkerMessage.LOAD_ERROR.value
_TAG_PROGRESS = WorkerMessage.PROGRESS.value
_TAG_RETIRING = WorkerMessage.RETIRING.value
_TAG_GIVEN_BACK = WorkerMessage.GIVEN_BACK.value
_TAG_STARTED = WorkerMessage.STARTED.value

Send = Callable[[tuple[Any, ...]], None]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What every worker of a pool gets at start: the pickled handler and its limits."""

    handler_bytes: bytes
    parent_pid: int
    heartbeat_interval: float
    max_tasks: int | None
    max_rss_mb: float | None


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) made one space."""
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


# --------------------------------------------------------------------------- the process


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
        slot[HEARTBEAT] = monotonic()


def _leave_to_the_parent(_signum: int, _frame: object) -> None:
    """SIGINT/SIGTERM handler of a worker: nothing; stopping is the parent's decision."""


def worker_main(conn: Any, shm: SharedSlots, seat: int, config: WorkerConfig) -> None:
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
    "given back N" when N was still queued (it is removed and will not run here),
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

    def __init__(self, fd: int, send: Send) -> None:
        self._fd = fd
        self._send = send
        self._lock = threading.Lock()  # guards every field below except _buf/_need
        self._queue: deque[Task | None] = deque()  # None: the pipe is closed
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

    def get(self) -> Task | None:
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
            self._read_from_parent()  # returns False: nobody waits while this thread reads
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
                    wake = self._read_from_parent()
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

    def _read_from_parent(self) -> bool:
        """One blocking read of the pipe; queue its tasks, answer its give-back requests.
        True when the main thread waits for the tasks queued: the caller releases
        ``_wakeup``."""
        try:
            data = os.read(self._fd, min(max(RECV_CHUNK, self._need), 1 << 24))
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
        tasks: list[Task | None] = []
        wake = False
        while True:
            message, end = decode(data, pos)
            if end > size:
                self._need = end - size
                break
            pos = end
            if type(message) is int:  # a give-back request, after the tasks before it
                if tasks:
                    wake |= self._put(tasks)
                    tasks = []
                self._give_back(message)
            else:
                tasks.append(message)
        if pos < size:
            with memoryview(data) as view:
                buf += view[pos:]
        if tasks:
            wake |= self._put(tasks)
        return wake

    def _put(self, messages: list[Task | None], closed: bool = False) -> bool:
        with self._lock:
            self._queue.extend(messages)
            self._closed |= closed
            wake = self._waiting
            self._waiting = False
        return wake

    def _give_back(self, task_id: int) -> None:
        answer: tuple[int, int] = (_TAG_STARTED, task_id)
        with self._lock:
            for index, message in enumerate(self._queue):
                if message is not None and message[0] == task_id:
                    del self._queue[index]
                    answer = (_TAG_GIVEN_BACK, task_id)
                    break
        self._send(answer)


def _sender(fd: int) -> Send:
    """send(message): one whole frame at a time (the main thread and the inbox thread
    both write)."""
    lock = threading.Lock()
    write = os.write

    def send(message: tuple[Any, ...]) -> None:
        header, body = encode(message)
        data = header + body
        with lock:
            sent = write(fd, data)
            if sent < len(data):
                with memoryview(data) as view:
                    while sent < len(data):
                        sent += write(fd, view[sent:])

    return send


def _worker_loop(conn: Any, shm: SharedSlots, seat: int, config: WorkerConfig) -> None:
    slot = shm.slot(seat)
    slot[HEARTBEAT] = time.monotonic()
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat,
        args=(slot, config.heartbeat_interval, stop),
        name="procpool-heartbeat",
        daemon=True,
    )
    beat.start()

    send = _sender(conn.fileno())
    try:
        handler = cloudpickle.loads(config.handler_bytes)
        if not callable(handler):
            raise TypeError(f"{handler!r} is not callable")
    except BaseException as exc:
        send((_TAG_LOAD_ERROR, one_line(f"{type(exc).__name__}: {exc}")))
        return

    inbox = _Inbox(conn.fileno(), send)
    send((_TAG_READY, os.getpid()))
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
                send((_TAG_RETIRING, retire))
                break
    finally:
        awaiter.close()
        stop.set()


def _run_task(
    send: Send,
    slot: memoryview[float],
    handler: Callable[[Record], object],
    awaiter: AwaitableRunner,
    task: Task,
) -> bool:
    """Run one task; False when the pool asked this worker to stop.

    A handler's awaitable result (an ``async def`` handler) is run to completion first.
    """
    task_id, raw_records = task
    monotonic = time.monotonic
    isawaitable = inspect.isawaitable
    task_mark = float(task_id)
    count = len(raw_records)
    slot[PROGRESS] = 0.0
    first = 0  # index of the first record in ``oks``
    oks: list[float] = []
    last_flush = monotonic()
    for index, raw in enumerate(raw_records):
        if slot[STOP]:
            return False
        if task_mark in (slot[CANCEL], slot[CANCEL + 1], slot[CANCEL + 2], slot[CANCEL + 3]):
            send((_TAG_PROGRESS, task_id, first, oks, None, index))
            return True
        record = Record(*raw)
        slot[SEQ] += 1.0
        slot[TASK] = task_mark
        started = monotonic()
        slot[STARTED] = started
        slot[PROGRESS] = 2.0 * index + 1.0
        slot[SEQ] += 1.0
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
            send((_TAG_PROGRESS, task_id, first, oks, failure, done))
            slot[PROGRESS] = 2.0 * index + 2.0
            if done >= 0:
                return True
            first = index + 1
            oks = []
            last_flush = ended
            continue
        ended = monotonic()
        oks.append(ended - started)
        slot[PROGRESS] = 2.0 * index + 2.0
        if ended - last_flush >= _OK_FLUSH_INTERVAL and index < count - 1:
            send((_TAG_PROGRESS, task_id, first, oks, None, -1))
            first = index + 1
            oks = []
            last_flush = ended
    send((_TAG_PROGRESS, task_id, first, oks, None, count))
    return True
