"""What the parent and a worker say to each other over their socketpair, and its framing.

A frame is multiprocessing.connection's: a 4-byte big-endian length and the body, or -1
and an 8-byte length for bodies of 2 GiB and more. The body is a pickle. ``encode`` and
``decode`` are the only code that builds or parses a frame, on both sides.

Worker -> parent: a tuple whose first item is a :class:`WorkerMessage` tag, sent as its
plain int value (a pickled enum member costs twice the bytes of a small message).

Parent -> worker: ``(task_id, [record tuples])`` is a task (:data:`Task`); a bare int N
asks the worker to give task N back (answered by GIVEN_BACK or STARTED).
"""

from __future__ import annotations

import enum
import pickle
import struct
from collections.abc import Callable
from typing import Any

from procpool_kafka.records import Record

#: bytes asked of the socket per read
RECV_CHUNK = 64 * 1024

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")

#: (task_id, record tuples): one task, parent -> worker
Task = tuple[int, list[tuple[Any, ...]]]

#: (index, duration, dotted type names, message, traceback) of the record that raised
Failure = tuple[int, float, list[str], str, str]

#: a Record is a NamedTuple: sent as a plain tuple (smaller than a pickled class reference)
record_to_tuple: Callable[[Record], tuple[Any, ...]] = tuple


class WorkerMessage(enum.IntEnum):
    """The tag of a worker -> parent message, and the shape of the tuple it starts."""

    READY = 0
    """(READY, pid): the handler is loaded; the worker takes tasks."""
    LOAD_ERROR = 1
    """(LOAD_ERROR, one-line description): the handler cannot be loaded; the worker exits."""
    PROGRESS = 2
    """(PROGRESS, task_id, first_index, ok_durations, Failure | None, done).

    ``ok_durations`` are those of the records from ``first_index`` on that returned; a
    failure follows them. ``done`` is -1 while the task goes on; else the index where it
    stopped (len(records) when complete, lower when the rest was skipped because the task
    was cancelled)."""
    RETIRING = 3
    """(RETIRING, reason): the worker recycles itself after this task and exits."""
    GIVEN_BACK = 4
    """(GIVEN_BACK, task_id): answer to a give-back request; the task will not run here."""
    STARTED = 5
    """(STARTED, task_id): answer to a give-back request; the task was already taken."""


def encode(message: object) -> tuple[bytes, bytes]:
    """The frame of ``message``: (header, body), to be sent in that order."""
    body = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    length = len(body)
    if length < 0x7FFFFFFF:
        return _HEADER.pack(length), body
    return _HEADER.pack(-1) + _LONG_HEADER.pack(length), body  # pragma: no cover - 2 GiB


def decode(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """(message, end) of the frame at ``buf[pos:]``.

    When that frame is incomplete, ``end`` > len(buf) (by how many bytes it still lacks,
    when its header is complete) and the message is None.
    """
    size = len(buf)
    if size - pos < 4:
        return None, size + 1
    (length,) = _HEADER.unpack_from(buf, pos)
    start = pos + 4
    if length == -1:
        if size - pos < 12:
            return None, size + 1
        (length,) = _LONG_HEADER.unpack_from(buf, pos + 4)
        start = pos + 12
    end = start + length
    if end > size:
        return None, end
    with memoryview(buf) as view:
        return pickle.loads(view[start:end]), end
