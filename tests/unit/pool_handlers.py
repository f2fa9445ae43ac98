"""Handlers for tests/unit/test_pool.py, importable by the pool's worker processes.

``command`` reads the record's value as a small command language, so one
handler covers every behaviour the tests need:

    ok                  return
    fail:TEXT           raise ValueError(TEXT)
    sleep:SECONDS       time.sleep (pure C, releases the GIL)
    spin:SECONDS        a pure-Python busy loop (holds the GIL between switches)
    gilsleep:SECONDS    sleep in C *holding* the GIL (a worker wedged in C code)
    waitfile:PATH       poll until PATH exists (at most 30 s), then return
    sysexit             sys.exit(3)
    _exit:CODE          os._exit(CODE)
    segv                a real segmentation fault
    unpicklable         raise an exception that cannot be pickled
    grow:MB             keep MB more megabytes alive in this process
    mpchild             start and join a multiprocessing child process

The ``async`` handlers below read the value as a path to create after an ``await`` (or
``fail:TEXT``, raised after an await; ``sleep:SECONDS``; ``background:PATH`` leaves a task
running that creates PATH when cancelled), one per shape a coroutine handler can take.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

from procpool_kafka.records import Record

_hoard: list[bytes] = []


class UnpicklableError(Exception):
    """An exception holding a lock: pickling it fails."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("UnpicklableError cannot be pickled")


def command(record: Record) -> None:
    text = (record.value or b"ok").decode()
    verb, _, argument = text.partition(":")
    if verb == "ok":
        return
    if verb == "fail":
        raise ValueError(argument)
    if verb == "sleep":
        time.sleep(float(argument))
        return
    if verb == "spin":
        deadline = time.monotonic() + float(argument)
        while time.monotonic() < deadline:
            pass
        return
    if verb == "gilsleep":
        ctypes.PyDLL(None).sleep(int(argument))  # PyDLL: the GIL stays held
        return
    if verb == "waitfile":
        deadline = time.monotonic() + 30.0
        while not Path(argument).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return
    if verb == "sysexit":
        sys.exit(3)
    if verb == "_exit":
        os._exit(int(argument))
    if verb == "segv":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        ctypes.string_at(0)
        return
    if verb == "unpicklable":
        raise UnpicklableError("holds a lock")
    if verb == "grow":
        _hoard.append(b"\x01" * (int(argument) * 1024 * 1024))
        return
    if verb == "mpchild":
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0,))
        child.start()
        child.join(30.0)
        if child.exitcode != 0:
            raise RuntimeError(f"child exit code {child.exitcode}")
        return
    raise AssertionError(f"unknown command {text!r}")


def noop(record: Record) -> None:
    """The cheapest handler (benchmarks)."""


def _noop(record: Record) -> None:
    """Does nothing."""


def killing_loader(marker: str, always: bool) -> Callable[[Record], None]:
    """Unpickled in a worker at start-up: SIGKILL that worker (the first time, or always)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        first = True
    except FileExistsError:
        first = False
    if first or always:
        os.kill(os.getpid(), signal.SIGKILL)
    return _noop


class KilledAtLoad:
    """A handler whose unpickling kills the worker process (see killing_loader)."""

    def __init__(self, marker: str, always: bool) -> None:
        self._marker = marker
        self._always = always

    def __call__(self, record: Record) -> None:
        """Never called in the parent."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (killing_loader, (self._marker, self._always))


_background: set[asyncio.Task[None]] = set()


async def _note_cancel(path: str) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        Path(path).touch()
        raise


async def touch_after_await(record: Record, suffix: str = "") -> None:
    """Await, then create the file named by the value (+ suffix); ``fail:TEXT`` raises."""
    await asyncio.sleep(0.01)
    text = (record.value or b"").decode()
    if text.startswith("fail:"):
        raise ValueError(text.removeprefix("fail:"))
    if text.startswith("sleep:"):
        await asyncio.sleep(float(text.removeprefix("sleep:")))
        return
    if text.startswith("background:"):  # leave a task running; it notes its cancellation
        _background.add(asyncio.create_task(_note_cancel(text.removeprefix("background:"))))
        return
    Path(text + suffix).write_text(str(id(asyncio.get_running_loop())))


class AsyncCallable:
    """An object whose ``__call__`` is a coroutine function."""

    async def __call__(self, record: Record) -> None:
        await touch_after_await(record)


def returns_coroutine(record: Record) -> Awaitable[None]:
    """A plain function returning a coroutine."""
    return touch_after_await(record)


class _Awaitable:
    """An awaitable that is not a coroutine (it has ``__await__``)."""

    def __init__(self, record: Record) -> None:
        self._record = record

    def __await__(self) -> Generator[Any, None, None]:
        return touch_after_await(self._record).__await__()


def returns_awaitable(record: Record) -> Awaitable[None]:
    """A plain function returning an awaitable object that is not a coroutine."""
    return _Awaitable(record)
