"""Supervisor: decides which workers to kill, and why.

It owns the deadlines of running handler calls: the per-call hard timeout (``task_timeout``),
heartbeat loss (a worker hung in C code holding the GIL stops stamping its slot), the single
deadline of a revoke drain or a graceful stop, and the grace period of work whose partition
was lost. It only decides; the consumer carries the kills out through the pool and turns each
aborted record into the failure type that matches the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from procpool_kafka.errors import RecordFailure, TaskTimeout, WorkerLost
from procpool_kafka.records import RunningRecord, TopicPartition


class KillReason(StrEnum):
    """Why the supervisor killed a worker; the value is the reason the pool reports back."""

    TASK_TIMEOUT = "task-timeout"
    HEARTBEAT_LOST = "heartbeat-lost"
    REVOKE_TIMEOUT = "revoke-timeout"
    STOP_TIMEOUT = "stop-timeout"
    PARTITION_LOST = "partition-lost"

    @property
    def failure(self) -> type[RecordFailure] | None:
        """The failure the record gets, or None when its outcome no longer matters."""
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


class Supervisor:
    """Deadline checks over the records the pool reports as running."""

    def __init__(self, task_timeout: float | None, heartbeat_timeout: float | None) -> None:
        self._task_timeout = task_timeout
        self._heartbeat_timeout = heartbeat_timeout
        self._orphan_deadlines: dict[TopicPartition, float] = {}

    def overdue(
        self,
        running: Iterable[RunningRecord],
        now: float,
        owned: Callable[[TopicPartition], bool],
    ) -> list[KillOrder]:
        """Workers to kill now: task timeout, heartbeat loss, or orphaned past its grace."""
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
        if not owned(tp):
            deadline = self._orphan_deadlines.get(tp)
            if deadline is not None and now >= deadline:
                return KillReason.PARTITION_LOST
            return None
        if self._task_timeout is not None and now - item.started_at > self._task_timeout:
            return KillReason.TASK_TIMEOUT
        if (
            self._heartbeat_timeout is not None
            and now - max(item.last_heartbeat, item.started_at) > self._heartbeat_timeout
        ):
            return KillReason.HEARTBEAT_LOST
        return None

    def orphan(self, partitions: Iterable[TopicPartition], deadline: float) -> None:
        """Running work of these (lost) partitions is killed once ``deadline`` passes."""
        for tp in partitions:
            self._orphan_deadlines[tp] = deadline

    def adopt(self, partitions: Iterable[TopicPartition]) -> None:
        """These partitions are owned again: no orphan deadline applies."""
        for tp in partitions:
            self._orphan_deadlines.pop(tp, None)

    def prune_orphans(self, still_running: Iterable[TopicPartition]) -> None:
        """Forget orphan deadlines of partitions that no longer run anything."""
        keep = set(still_running)
        for tp in list(self._orphan_deadlines):
            if tp not in keep:
                del self._orphan_deadlines[tp]


def running_in(
    running: Iterable[RunningRecord], partitions: set[TopicPartition]
) -> list[RunningRecord]:
    """The running records that belong to ``partitions``."""
    return [item for item in running if item.record.topic_partition in partitions]
