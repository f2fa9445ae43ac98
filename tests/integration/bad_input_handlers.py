"""A handler for the bad-input matrix (test_bad_input.py): module-level, so workers import it.

``inspect`` writes one JSON line per call to a store file (O_APPEND writes of one line are
atomic) describing exactly what arrived -- key and header values as hex, the value's length
and SHA-256 (values may be 1 MB) -- and then misbehaves as the record's ``x-do`` header says
(the value is left free to be anything, empty or null):

    (no x-do)           return None
    fail                raise ValueError
    fail-until:N        raise RuntimeError while record.attempt < N
    return-unpicklable  return an object that cannot be pickled (a lock)
    raise-unpicklable   raise an exception that cannot be pickled
    sys-exit            sys.exit(3)
    os-exit             os._exit(7) (the worker dies)
    segv                a real segmentation fault (the worker dies)
    leak:MB             keep MB more megabytes alive in this worker, then return
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import sys
import threading
from pathlib import Path
from typing import Any

from procpool_kafka import Record

_hoard: list[bytes] = []


class UnpicklableError(Exception):
    """An exception holding a lock: pickling it fails."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("UnpicklableError cannot be pickled")


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def describe(record: Record) -> dict[str, Any]:
    """What the handler saw, as JSON-safe values."""
    value = record.value
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "attempt": record.attempt,
        "key": _hex(record.key),
        "value_len": None if value is None else len(value),
        "value_sha": None if value is None else hashlib.sha256(value).hexdigest(),
        "headers": [[name, _hex(header_value)] for name, header_value in record.headers],
        "pid": os.getpid(),
    }


def _write(store: str, event: str, record: Record) -> None:
    line = json.dumps({"event": event, **describe(record)})
    fd = os.open(store, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def inspect(store: str, record: Record) -> object:
    """Write what arrived, then behave as the ``x-do`` header says."""
    _write(store, "start", record)
    command = (record.header("x-do") or b"").decode()
    verb, _, argument = command.partition(":")
    result: object = None
    if verb == "fail":
        raise ValueError(f"scripted failure of {record.topic}@{record.offset}")
    if verb == "fail-until" and record.attempt < int(argument):
        raise RuntimeError(f"transient failure of attempt {record.attempt}")
    if verb == "return-unpicklable":
        result = threading.Lock()
    if verb == "raise-unpicklable":
        raise UnpicklableError("holds a lock")
    if verb == "sys-exit":
        sys.exit(3)
    if verb == "os-exit":
        os._exit(7)
    if verb == "segv":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        ctypes.string_at(0)
    if verb == "leak":
        _hoard.append(b"\x01" * (int(argument) * 1024 * 1024))
    _write(store, "done", record)
    return result


def read(store: str | Path, event: str = "done") -> list[dict[str, Any]]:
    path = Path(store)
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [entry for entry in entries if entry["event"] == event]
