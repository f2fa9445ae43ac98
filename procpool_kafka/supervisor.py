"""Supervisor: every deadline of running handler calls, turned into kill orders.

It owns the per-call hard timeout (``task_timeout``), heartbeat loss (a worker hung in C code
holding the GIL stops stamping its slot), and the deadlines of whole partitions: the single
deadline of a revoke drain or a graceful stop (the partition is still owned, its running work
must finish by then), and the grace period of work whose partition was lost. It only decides;
the consumer carries the kills out through the pool, which hands each kill's reason back
unchanged on the aborted record, and turns it into the failure type that matches
(:attr:`KillReason.failure`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from procpool_kafka.errors import RecordFailure, TaskTimeout, WorkerLost
from procpool_kafka.records import RunningRecord, TopicPartition

#: after a drain's deadline, how long the drain waits for the killed work to report (killed
#: workers are SIGKILLed, so they are gone long before) before it gives up on it
KILL_SETTLE_SECONDS = 5.0


class KillReason(StrEnum):
    """Why the supervisor killed a worker; the pool reports it back as given."""

    TASK_TIMEOUT = "task-timeout"
    HEARTBEAT_LOST = "heartbeat-lost"
    REVOKE_TIMEOUT = "revoke-timeout"
    STOP_TIMEOUT = "stop-timeout"
    PARTITION_LOST = "partition-lost"

    @property
    def failure(self) -> type[RecordFailure] | None:
        """The failure the record gets, or None when its outcome no longer matters (its
        partition is being given up: the next owner runs it)."""
        if self is KillReason.TASK_TIMEOUT:
            return TaskTimeout
        if self is KillReason.HEARTBEAT_LOST:
            return WorkerLost
        return None


@dataclass(frozen=True, slots=True)
class KillOrder:
    pid: int
    reason: KillReason
    running: RunningRecord


@dataclass(frozen=True, slots=True)
class _PartitionDeadline:
    at: float  # time.monotonic()
    reason: KillReason


class Supervisor:
    """Deadline checks over the records the pool reports as running."""

    def __init__(self, task_timeout: float | None, heartbeat_timeout: float | None) -> None:
        self._task_timeout = task_timeout
        self._heartbeat_timeout = heartbeat_timeout
        self._partition_deadlines: dict[TopicPartition, _PartitionDeadline] = {}

    def overdue(
        self,
        running: Iterable[RunningRecord],
        now: float,
        owned: Callable[[TopicPartition], bool],
    ) -> list[KillOrder]:
        """Workers to kill now: task timeout, heartbeat loss, a drain's deadline, or work of
        a lost partition past its grace."""
        orders = []
        for item in running:
            reason = self._reason(item, now, owned)
            if reason is not None:
                orders.append(KillOrder(item.pid, reason, item))
        return orders

    def _reason(
        self, item: RunningRecord, now: float, owned: Callable[[TopicPartition], bool]
    ) -> KillReason | None:
        tp = item.record.topic_partition
        if owned(tp):
            if self._task_timeout is not None and now - item.started_at > self._task_timeout:
                return KillReason.TASK_TIMEOUT
            if (
                self._heartbeat_timeout is not None
                and now - max(item.last_heartbeat, item.started_at) > self._heartbeat_timeout
            ):
                return KillReason.HEARTBEAT_LOST
        deadline = self._partition_deadlines.get(tp)
        if deadline is not None and now >= deadline.at:
            return deadline.reason
        return None

    # ------------------------------------------------------------------ drains

    def start_drain(
        self, partitions: Iterable[TopicPartition], deadline: float, reason: KillReason
    ) -> None:
        """Running work of these (owned) partitions is killed for ``reason`` at ``deadline``
        (a revoke or a stop)."""
        for tp in partitions:
            self._partition_deadlines[tp] = _PartitionDeadline(deadline, reason)

    def hurry_drain(self, partitions: Iterable[TopicPartition], now: float) -> None:
        """A forced stop: the drain's deadline of these partitions is now."""
        for tp in partitions:
            deadline = self._partition_deadlines.get(tp)
            if deadline is not None and deadline.at > now:
                self._partition_deadlines[tp] = _PartitionDeadline(now, deadline.reason)

    def drain_given_up(self, partitions: Iterable[TopicPartition], now: float) -> bool:
        """True once ``KILL_SETTLE_SECONDS`` passed after the drain's deadline of any of
        these partitions: what has not reported by then stays uncommitted."""
        return any(
            now >= deadline.at + KILL_SETTLE_SECONDS
            for tp in partitions
            if (deadline := self._partition_deadlines.get(tp)) is not None
        )

    def end_drain(self, partitions: Iterable[TopicPartition]) -> None:
        """The drain of these partitions is over: its deadline no longer applies."""
        for tp in partitions:
            self._partition_deadlines.pop(tp, None)

    # ------------------------------------------------------------------ lost partitions

    def orphan(self, partitions: Iterable[TopicPartition], deadline: float) -> None:
        """Running work of these (lost) partitions is killed once ``deadline`` passes."""
        for tp in partitions:
            self._partition_deadlines[tp] = _PartitionDeadline(deadline, KillReason.PARTITION_LOST)

    def adopt(self, partitions: Iterable[TopicPartition]) -> None:
        """These partitions are owned again: no orphan deadline applies."""
        self.end_drain(partitions)

    def prune_orphans(self, still_running: Iterable[TopicPartition]) -> None:
        """Forget orphan deadlines of partitions that no longer run anything."""
        keep = set(still_running)
        for tp in list(self._partition_deadlines):
            if tp not in keep and self._partition_deadlines[tp].reason is KillReason.PARTITION_LOST:
                del self._partition_deadlines[tp]
