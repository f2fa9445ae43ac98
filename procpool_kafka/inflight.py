"""The records received and not done yet, and what each pool outcome does to them.

``InFlightRecords`` is the registry: one entry per received record (by its
(topic, partition, offset)), remembering the pool task that runs it. That task id is the
fence: an outcome whose task id does not match the entry's (an earlier assignment of the
partition, or an earlier dispatch of a record that was re-queued) is ignored.

``OutcomeHandler`` turns the pool's events into the record's next state::

    RecordFinished, no error  -> done (OffsetTracker.done)
    RecordFinished, error     -> routed (retry or dead-letter copy); done once acknowledged
    RecordAborted, killed     -> the kill's reason decides: a task timeout or a lost
                                 heartbeat is a failure (routed as above); a revoke, stop
                                 or loss deadline leaves it to the next owner (not done)
    RecordAborted, crashed    -> dispatched again, or failed with WorkerCrashed after
                                 crash_limit deaths; of a partition being given up: left to
                                 the next owner
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from procpool_kafka.dispatch import BatchSizer
from procpool_kafka.errors import WorkerCrashed
from procpool_kafka.metrics import Counters
from procpool_kafka.offsets import OffsetTracker
from procpool_kafka.pool import PoolEvent, RecordAborted, RecordFinished
from procpool_kafka.records import HandlerError, Record, RecordId, TopicPartition, record_id
from procpool_kafka.retry.headers import RetryInfo
from procpool_kafka.retry.policy import Decision, Route
from procpool_kafka.supervisor import KillReason

log = logging.getLogger(__name__)

#: hand a failed record to the retry/dead-letter router: (record, error, its retry headers)
RouteFailure = Callable[[Record, HandlerError, RetryInfo | None], None]


@dataclass
class InFlightRecord:
    """A received record that is not done yet."""

    record: Record
    task_id: int | None = None  # pool task running it; None while waiting to be dispatched
    crashes: int = 0
    retry_info: RetryInfo | None = None  # what its retry headers said (retry topics only)


class InFlightRecords:
    """The registry of received records that are not done, by (topic, partition, offset)."""

    def __init__(self) -> None:
        self._entries: dict[RecordId, InFlightRecord] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[InFlightRecord]:
        return iter(self._entries.values())

    def add(self, record: Record, retry_info: RetryInfo | None = None) -> None:
        self._entries[record_id(record)] = InFlightRecord(record, retry_info=retry_info)

    def of(self, record: Record) -> InFlightRecord | None:
        """The entry of this very record (not of an earlier copy with the same offset)."""
        entry = self._entries.get(record_id(record))
        return entry if entry is not None and entry.record is record else None

    def reported(self, task_id: int, record: Record) -> InFlightRecord | None:
        """The entry an outcome of ``task_id`` belongs to, or None when fenced off."""
        entry = self._entries.get(record_id(record))
        return entry if entry is not None and entry.task_id == task_id else None

    def submitted(self, task_id: int, records: Iterable[Record]) -> None:
        """These records now run in pool task ``task_id``."""
        for record in records:
            entry = self._entries.get(record_id(record))
            if entry is not None:
                entry.task_id = task_id

    def remove(self, record: Record) -> None:
        self._entries.pop(record_id(record), None)

    def drop(self, partitions: set[TopicPartition]) -> None:
        """Forget every record of ``partitions``."""
        for key in [k for k, e in self._entries.items() if e.record.topic_partition in partitions]:
            del self._entries[key]

    def unsettled_tasks(self, partitions: set[TopicPartition], busy: set[int]) -> set[int]:
        """Tasks among ``busy`` (the pool's) that run records of ``partitions``."""
        return {
            entry.task_id
            for entry in self._entries.values()
            if entry.task_id is not None
            and entry.task_id in busy
            and entry.record.topic_partition in partitions
        }


class OutcomeHandler:
    """Applies pool events and routed failures to the in-flight records and the tracker."""

    def __init__(
        self,
        inflight: InFlightRecords,
        tracker: OffsetTracker,
        counters: Counters,
        sizer: BatchSizer,
        crash_limit: int,
        *,
        draining: Callable[[TopicPartition], bool],
        requeue: Callable[[Record], None],
        route: RouteFailure,
        retry_copy_made: Callable[[TopicPartition, int], None],
    ) -> None:
        self._inflight = inflight
        self._tracker = tracker
        self._counters = counters
        self._sizer = sizer
        self._crash_limit = crash_limit
        self._draining = draining
        self._requeue = requeue
        self._route = route
        self._retry_copy_made = retry_copy_made

    def handle(self, events: Iterable[PoolEvent]) -> None:
        for event in events:
            entry = self._inflight.reported(event.task_id, event.record)
            if entry is None:
                continue  # an outcome of an earlier assignment or dispatch: fenced
            if isinstance(event, RecordFinished):
                self._sizer.observe(event.duration)
                self._counters.durations.observe(event.duration)
                if event.error is None:
                    self._counters.succeeded[event.record.topic] += 1
                    self._complete(entry)
                else:
                    self._fail(entry, event.error)
            else:
                self._aborted(entry, event)

    def routed(self, record: Record, decision: Decision, copy: RecordId | None) -> None:
        """The failed record's copy was acknowledged (or it needs none): its offset is done."""
        entry = self._inflight.of(record)
        if entry is not None:
            self._complete(entry)
        if copy is not None and decision.route is Route.RETRY:
            topic, partition, offset = copy
            self._retry_copy_made(TopicPartition(topic, partition), offset)

    def _aborted(self, entry: InFlightRecord, event: RecordAborted) -> None:
        if event.killed:
            self._killed(entry, event)
            return
        record = entry.record
        self._counters.worker_crashes += 1
        if event.cancelled or self._draining(record.topic_partition):
            # its partition is being revoked (or the consumer stops): not done, not run here
            # again; the next owner (or the next run) handles it
            log.warning(
                "worker %d died (%s) running %r of a partition being given up; not run again here",
                event.pid,
                event.reason,
                record,
            )
            self._inflight.remove(record)
            return
        entry.crashes += 1
        if entry.crashes >= self._crash_limit:
            message = (
                f"worker died {entry.crashes} times running this record (last: {event.reason})"
            )
            self._fail(entry, HandlerError.of_type(WorkerCrashed, message))
            return
        log.warning(
            "worker %d died (%s) running %r; dispatching it again (%d/%d)",
            event.pid,
            event.reason,
            record,
            entry.crashes,
            self._crash_limit,
        )
        entry.task_id = None
        self._requeue(record)

    def _killed(self, entry: InFlightRecord, event: RecordAborted) -> None:
        # the pool hands back the reason given to kill() as it was: ours are KillReasons
        reason = event.reason if isinstance(event.reason, KillReason) else None
        failure = None if reason is None else reason.failure
        if failure is None:
            # killed at a revoke, stop or loss deadline: not done, the next owner runs it
            self._inflight.remove(entry.record)
            return
        self._fail(entry, HandlerError.of_type(failure, f"worker {event.pid} killed: {reason}"))

    def _fail(self, entry: InFlightRecord, error: HandlerError) -> None:
        """A handler attempt failed: the router copies it to a retry or dead-letter topic.

        The record stays in flight (its offset not done) until the copy is acknowledged.
        """
        entry.task_id = None
        self._route(entry.record, error, entry.retry_info)

    def _complete(self, entry: InFlightRecord) -> None:
        record = entry.record
        self._inflight.remove(record)
        self._tracker.done(record.topic_partition, record.offset)
