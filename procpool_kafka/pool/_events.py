"""The events the pool reports: what became of each record submitted (see WorkerPool.collect)."""

from __future__ import annotations

from dataclasses import dataclass

from procpool_kafka.records import HandlerError, Record


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
    ``reason``: for a kill, the reason given to ``kill()``, unchanged; otherwise how the
    process ended ("signal SIGSEGV", "exit code 3").
    """

    task_id: int
    record: Record
    killed: bool
    reason: str
    pid: int
    cancelled: bool = False


PoolEvent = RecordFinished | RecordAborted
