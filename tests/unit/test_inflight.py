"""InFlightRecords (the task-id fence) and OutcomeHandler (what each pool event does)."""

from __future__ import annotations

from dataclasses import dataclass, field

from procpool_kafka.dispatch import BatchSizer
from procpool_kafka.errors import TaskTimeout, WorkerCrashed, WorkerLost
from procpool_kafka.inflight import InFlightRecords, OutcomeHandler
from procpool_kafka.metrics import Counters
from procpool_kafka.offsets import OffsetTracker
from procpool_kafka.pool import RecordAborted, RecordFinished
from procpool_kafka.records import HandlerError, Record, TopicPartition
from procpool_kafka.retry.headers import RetryInfo
from procpool_kafka.retry.policy import Decision, Route
from procpool_kafka.supervisor import KillReason

TP = TopicPartition("t", 0)


def record(offset: int, tp: TopicPartition = TP) -> Record:
    return Record(tp.topic, tp.partition, offset, None, b"v")


@dataclass
class Harness:
    """An OutcomeHandler over real bookkeeping; what it hands on is recorded."""

    crash_limit: int = 3
    inflight: InFlightRecords = field(default_factory=InFlightRecords)
    tracker: OffsetTracker = field(default_factory=OffsetTracker)
    counters: Counters = field(default_factory=Counters)
    draining: set[TopicPartition] = field(default_factory=set)
    requeued: list[Record] = field(default_factory=list)
    routed: list[tuple[Record, HandlerError, RetryInfo | None]] = field(default_factory=list)
    copies: list[tuple[TopicPartition, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.handler = OutcomeHandler(
            self.inflight,
            self.tracker,
            self.counters,
            BatchSizer(None, 100),
            self.crash_limit,
            draining=self.draining.__contains__,
            requeue=self.requeued.append,
            route=lambda r, e, i: self.routed.append((r, e, i)),
            retry_copy_made=lambda tp, offset: self.copies.append((tp, offset)),
        )

    def receive(self, *records: Record, task_id: int = 1) -> None:
        for item in records:
            self.tracker.received(item.topic_partition, item.offset)
            self.inflight.add(item)
        self.inflight.submitted(task_id, records)


def finished(item: Record, task_id: int = 1, error: HandlerError | None = None) -> RecordFinished:
    return RecordFinished(task_id, item, error, 0.01, 42)


def aborted(
    item: Record, task_id: int = 1, reason: str = "signal SIGSEGV", killed: bool = False
) -> RecordAborted:
    return RecordAborted(task_id, item, killed, reason, 42)


def test_registry_fences_outcomes_of_other_tasks_and_other_copies() -> None:
    inflight = InFlightRecords()
    first = record(5)
    inflight.add(first)
    assert inflight.reported(1, first) is None  # not submitted yet
    inflight.submitted(1, [first])
    assert inflight.reported(2, first) is None
    entry = inflight.reported(1, first)
    assert entry is not None and entry.record is first
    same_offset = record(5)  # equal, but not the copy in flight
    assert inflight.of(same_offset) is None and inflight.of(first) is entry
    inflight.remove(first)
    assert len(inflight) == 0


def test_registry_drops_partitions_and_finds_their_unsettled_tasks() -> None:
    inflight = InFlightRecords()
    other = TopicPartition("t", 1)
    inflight.add(record(1))
    inflight.add(record(2, other))
    inflight.add(record(3))
    inflight.submitted(7, [record(1), record(2, other)])
    inflight.submitted(8, [record(3)])
    assert inflight.unsettled_tasks({TP}, busy={7, 8}) == {7, 8}
    assert inflight.unsettled_tasks({TP}, busy={8}) == {8}
    assert inflight.unsettled_tasks({other}, busy={8}) == set()
    inflight.drop({TP})
    assert [entry.record.offset for entry in inflight] == [2]


def test_success_marks_done_and_failure_is_routed_not_done() -> None:
    harness = Harness()
    ok, bad = record(0), record(1)
    harness.receive(ok, bad)
    error = HandlerError("ValueError", "boom", "tb", ("builtins.ValueError",))
    harness.handler.handle([finished(ok), finished(bad, error=error)])
    assert harness.tracker.position(TP) == 1  # offset 1 waits for its copy
    assert harness.counters.succeeded["t"] == 1
    assert harness.routed == [(bad, error, None)]
    harness.handler.routed(bad, Decision(Route.RETRY, "t.retry", 2, 0), ("t.retry", 0, 9))
    assert harness.tracker.position(TP) == 2
    assert harness.copies == [(TopicPartition("t.retry", 0), 9)]


def test_outcomes_of_an_earlier_dispatch_are_ignored() -> None:
    harness = Harness()
    item = record(0)
    harness.receive(item, task_id=1)
    harness.inflight.submitted(2, [item])  # dispatched again after a crash
    harness.handler.handle([finished(item, task_id=1)])
    assert harness.tracker.first_pending(TP) == 0
    harness.handler.handle([finished(item, task_id=2)])
    assert harness.tracker.position(TP) == 1


def test_a_crash_dispatches_again_until_the_crash_limit_then_fails() -> None:
    harness = Harness(crash_limit=2)
    item = record(0)
    harness.receive(item)
    harness.handler.handle([aborted(item)])
    assert harness.requeued == [item] and harness.counters.worker_crashes == 1
    harness.inflight.submitted(2, [item])
    harness.handler.handle([aborted(item, task_id=2)])
    assert harness.requeued == [item]
    [(routed, error, _info)] = harness.routed
    assert routed is item and error.type_names[0].endswith(WorkerCrashed.__name__)


def test_a_crash_in_a_partition_being_given_up_is_left_to_the_next_owner() -> None:
    harness = Harness()
    item, cancelled = record(0), record(1)
    harness.receive(item, cancelled)
    harness.draining.add(TP)
    harness.handler.handle([aborted(item)])
    harness.draining.clear()
    harness.handler.handle([RecordAborted(1, cancelled, False, "exit code 1", 42, cancelled=True)])
    assert harness.requeued == [] and harness.routed == [] and len(harness.inflight) == 0
    assert harness.tracker.first_pending(TP) == 0  # neither is done


def test_a_kill_for_the_records_own_fault_fails_it_a_deadline_kill_leaves_it() -> None:
    harness = Harness()
    slow, wedged, revoked, unknown = record(0), record(1), record(2), record(3)
    harness.receive(slow, wedged, revoked, unknown)
    harness.handler.handle(
        [
            aborted(slow, reason=KillReason.TASK_TIMEOUT, killed=True),
            aborted(wedged, reason=KillReason.HEARTBEAT_LOST, killed=True),
            aborted(revoked, reason=KillReason.REVOKE_TIMEOUT, killed=True),
            aborted(unknown, reason="some other tag", killed=True),
        ]
    )
    assert [(r, e.type_names[0].rsplit(".", 1)[-1]) for r, e, _ in harness.routed] == [
        (slow, TaskTimeout.__name__),
        (wedged, WorkerLost.__name__),
    ]
    assert [entry.record for entry in harness.inflight] == [slow, wedged]  # wait for copies
