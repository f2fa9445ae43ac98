"""Handlers for integration tests: module-level so worker processes import them.

Each appends JSON lines to a store file (O_APPEND writes of one line are atomic), one
``{"event": "start"|"done", ...}`` line per call. What a handler does is scripted by the
record's value:

    ok:...            return
    fail:...          raise ValueError
    failuntil:N:...   raise RuntimeError while record.attempt < N
    crash:...         os._exit(3) (the worker dies)
    hang:...          sleep for an hour (a stuck handler)
    gilhang:...       sleep for an hour in C holding the GIL (a wedged worker)
    slow:SECONDS:...  sleep SECONDS, then return
    holdcrash:PATH    wait until PATH exists; the first run of each record then dies
                      (os._exit), a later one returns
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import time
from pathlib import Path
from typing import Any

from procpool_kafka import Record


def _write(store: str, event: str, record: Record, **extra: Any) -> None:
    line = json.dumps(
        {
            "event": event,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "attempt": record.attempt,
            "value": (record.value or b"").decode(errors="replace"),
            "pid": os.getpid(),
            "time": time.time(),
            **extra,
        }
    )
    fd = os.open(store, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def scripted(store: str, record: Record) -> None:
    """Behave as the record's value says; write start and done lines to ``store``."""
    _write(store, "start", record)
    value = (record.value or b"").decode(errors="replace")
    command, _, rest = value.partition(":")
    if command == "fail":
        raise ValueError(f"scripted failure of {record.topic}@{record.offset}")
    if command == "failuntil" and record.attempt < int(rest.split(":", 1)[0]):
        raise RuntimeError(f"transient failure of attempt {record.attempt}")
    if command == "crash":
        os._exit(3)
    if command == "crashafter":  # dies after a while, e.g. in the middle of a rebalance
        time.sleep(float(rest.split(":", 1)[0]))
        os._exit(3)
    if command == "hang":
        time.sleep(3600)
    if command == "gilhang":  # wedged in C code holding the GIL: heartbeats stop
        ctypes.PyDLL(None).sleep(3600)
    if command == "slow":
        time.sleep(float(rest.split(":", 1)[0]))
    if command == "holdcrash":
        _hold_then_crash_once(Path(rest), record)
    _write(store, "done", record)


def _hold_then_crash_once(release: Path, record: Record) -> None:
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    marker = release.with_name(f"{release.name}.{record.partition}.{record.offset}.crashed")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return  # crashed once already
    os._exit(3)


def plain(store: str, record: Record) -> None:
    """Succeed for every record, whatever its value says."""
    _write(store, "start", record)
    _write(store, "done", record)


async def async_plain(store: str, record: Record) -> None:
    """``plain`` as an ``async def`` handler: each line is written after an await."""
    await asyncio.sleep(0.001)
    _write(store, "start", record)
    await asyncio.sleep(0.001)
    _write(store, "done", record, loop=id(asyncio.get_running_loop()))


def read_store(store: str | Path, event: str = "done") -> list[dict[str, Any]]:
    path = Path(store)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry["event"] == event]


def coordinates(store: str | Path, event: str = "done") -> set[tuple[str, int, int]]:
    return {(e["topic"], e["partition"], e["offset"]) for e in read_store(store, event)}


def from_env(record: Record) -> None:
    """``scripted`` with the store named by $PROCPOOL_TEST_STORE (for the CLI tests)."""
    scripted(os.environ["PROCPOOL_TEST_STORE"], record)


class _Unpicklable:
    """A callable that cannot be pickled (it holds a lock)."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()

    def __call__(self, record: Record) -> None:
        with self._lock:
            pass


unpicklable_handler = _Unpicklable()
not_a_function = 42
