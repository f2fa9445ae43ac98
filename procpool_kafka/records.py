"""The shared data types: Record (what a handler receives), RecordId, HandlerError, RunningRecord.

confluent-kafka ``Message`` objects cannot cross a process boundary, so the
consumer converts each one into a :class:`Record` before dispatching it. The
pool reports what a handler raised as a :class:`HandlerError` and what a worker
is running as a :class:`RunningRecord`; the consumer, the supervisor and the
failure router read them without importing the pool.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

#: (name, value) pairs; a list in every Record the consumer builds
Headers = Sequence[tuple[str, bytes]]

#: (topic, partition, offset): what identifies one record (or the copy of one)
RecordId = tuple[str, int, int]


class TopicPartition(NamedTuple):
    """A (topic, partition) pair, hashable and cheap; no Kafka import needed."""

    topic: str
    partition: int


class Record(NamedTuple):
    """One consumed message, as handed to the user's handler in a worker.

    Immutable. ``headers`` is a list of (name, value bytes) pairs; ``timestamp`` is the
    message timestamp in epoch milliseconds (or None when the broker gave none);
    ``attempt`` is 1 for a first delivery and grows on each retry. (A NamedTuple rather
    than a frozen dataclass: it is built for every consumed message, about 4x faster.)
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp: int | None = None
    attempt: int = 1

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        for header_name, value in reversed(self.headers):
            if header_name == name:
                return value
        return None

    def __repr__(self) -> str:
        size = -1 if self.value is None else len(self.value)
        return (
            f"Record({self.topic}[{self.partition}]@{self.offset}, "
            f"attempt={self.attempt}, value_bytes={size})"
        )


def message_headers(message: Any) -> list[tuple[str, bytes]]:
    """A confluent-kafka message's headers as (name, bytes) pairs (None values become b"")."""
    raw_headers = message.headers() or []
    return [(name, value if value is not None else b"") for name, value in raw_headers]


def record_from_message(message: Any, attempt: int = 1) -> Record:
    """Convert a confluent-kafka ``Message`` into a :class:`Record`."""
    headers = message_headers(message)
    timestamp_type, timestamp = message.timestamp()
    return Record(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        key=message.key(),
        value=message.value(),
        headers=headers,
        timestamp=timestamp if timestamp_type != 0 else None,
        attempt=attempt,
    )


def record_id(record: Record) -> RecordId:
    """The (topic, partition, offset) of ``record``."""
    return (record.topic, record.partition, record.offset)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the unit of timestamps and retry headers)."""
    return int(time.time() * 1000)


def exception_type_names(exc_type: type[BaseException]) -> list[str]:
    """Dotted names of ``exc_type`` and its bases, most derived first (the input of ``decide``).

    >>> exception_type_names(KeyError)
    ['builtins.KeyError', 'builtins.LookupError', 'builtins.Exception', 'builtins.BaseException']
    """
    return [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in exc_type.__mro__
        if issubclass(cls, BaseException)
    ]


@dataclass(frozen=True, slots=True)
class HandlerError:
    """What a handler raised, as strings only (so any exception can be reported)."""

    type_name: str
    message: str
    traceback: str
    #: the exception's class and its bases, dotted, most derived first (for retry policies)
    type_names: tuple[str, ...]

    @classmethod
    def of_type(cls, exc_type: type[BaseException], message: str) -> HandlerError:
        """A failure of type ``exc_type`` that no handler raised (no traceback)."""
        names = exception_type_names(exc_type)
        return cls(names[0], message, "", tuple(names))


@dataclass(frozen=True, slots=True)
class RunningRecord:
    """A record a worker is running now (``time.monotonic()`` values)."""

    pid: int
    task_id: int
    record: Record
    started_at: float
    last_heartbeat: float
