"""Committer: every commit the consumer makes, and what the broker says of them.

    commit_if_due()  every commit_interval: the contiguous done prefix of each owned
                     partition (OffsetTracker.commits_due), asynchronously; idle partitions
                     first move to librdkafka's position (transaction markers)
    commit_sync()    at a revoke or a stop: the positions of those partitions, now,
                     transient errors retried for at most SYNC_COMMIT_SECONDS
    on_commit()      librdkafka's commit callback: a failed commit is tried again later

Only offsets the tracker says are done are ever committed; the tracker owns that invariant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from procpool_kafka.broker_calls import call_with_retry, checked
from procpool_kafka.errors import ProcPoolKafkaError
from procpool_kafka.offsets import OffsetTracker
from procpool_kafka.records import TopicPartition

log = logging.getLogger(__name__)

#: longest time a synchronous commit (revoke, stop) retries transient errors
SYNC_COMMIT_SECONDS = 10.0


class Committer:
    """Commits of one consumer's owned partitions (``owned`` is its live set)."""

    def __init__(
        self,
        tracker: OffsetTracker,
        owned: Collection[TopicPartition],
        commit_interval: float,
        connect_timeout: float,
        on_success: Callable[[], None],
    ) -> None:
        self._tracker = tracker
        self._owned = owned
        self._commit_interval = commit_interval
        self._connect_timeout = connect_timeout
        self._on_success = on_success
        self._consumer: Consumer | None = None
        self._last_commit = 0.0
        self._async_pending = 0  # asynchronous commits not yet reported by on_commit
        self._in_sync_commit = False  # on_commit now reports the synchronous commit

    def attach(self, consumer: Consumer) -> None:
        """The Kafka consumer to commit through (made after this, with on_commit in it)."""
        self._consumer = consumer

    def _require_consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the committer has no Kafka consumer yet")
        return self._consumer

    def commit_if_due(self, is_paused: Callable[[TopicPartition], bool]) -> None:
        """Commit the done prefixes asynchronously, at most once per commit_interval."""
        now = time.monotonic()
        if now - self._last_commit < self._commit_interval:
            return
        self._last_commit = now
        self._advance_idle_partitions(is_paused)
        due = self._tracker.commits_due(self._owned)
        if not due:
            return
        offsets = [KafkaTopicPartition(tp.topic, tp.partition, pos) for tp, pos in due.items()]
        try:
            self._require_consumer().commit(offsets=offsets, asynchronous=True)
        except KafkaException as error:
            log.warning("asynchronous commit failed: %s", error)
            return
        self._async_pending += 1
        for tp, position in due.items():
            self._tracker.mark_committed(tp, position)

    def _advance_idle_partitions(self, is_paused: Callable[[TopicPartition], bool]) -> None:
        """Move the commit position of idle partitions to librdkafka's position.

        A transactional producer leaves commit/abort markers (and aborted records) that are
        never delivered, so "last done + 1" can stay below the end for good. A partition whose
        every delivered record is done (nothing pending, not paused, nothing discarded for a
        seek back) may commit librdkafka's position: every offset below it was delivered and
        handled, or was a marker.
        """
        idle = [
            tp for tp in self._owned if not self._tracker.pending_count(tp) and not is_paused(tp)
        ]
        if not idle:
            return
        try:
            positions = self._require_consumer().position(
                [KafkaTopicPartition(tp.topic, tp.partition) for tp in idle]
            )
        except KafkaException as error:
            log.debug("reading positions failed: %s", error)
            return
        for tp in positions:
            if tp.error is None and tp.offset >= 0:
                self._tracker.advance_idle(TopicPartition(tp.topic, tp.partition), tp.offset)

    def commit_sync(
        self, tps: Iterable[TopicPartition], serve: Callable[[float], None] | None = None
    ) -> None:
        """Commit the positions of ``tps`` now, retrying transient errors for a bounded time.

        ``serve`` (outside a rebalance callback only: it polls the consumer):
        REBALANCE_IN_PROGRESS is waited out by serving the rebalance with it.
        """
        offsets = []
        for tp in tps:
            position = self._tracker.position(tp)
            if position is not None:
                offsets.append(KafkaTopicPartition(tp.topic, tp.partition, position))
        if not offsets:
            return
        consumer = self._require_consumer()
        deadline = time.monotonic() + min(self._connect_timeout, SYNC_COMMIT_SECONDS)
        owned = self._owned
        wanted = [tp for tp in offsets if TopicPartition(tp.topic, tp.partition) in owned]

        def commit(_timeout: float) -> None:
            # a rebalance served meanwhile may have revoked (and committed) some of them
            still_owned = [t for t in wanted if TopicPartition(t.topic, t.partition) in owned]
            if still_owned:
                self._in_sync_commit = True
                try:
                    checked(consumer.commit(offsets=still_owned, asynchronous=False))
                finally:
                    self._in_sync_commit = False

        if serve is not None:
            self._settle_async(serve, deadline)

        try:
            call_with_retry(
                f"committing {describe(offsets)}",
                commit,
                deadline,
                retry_rebalance=serve is not None,
                wait=serve if serve is not None else time.sleep,
            )
        except ProcPoolKafkaError as error:
            log.warning("synchronous commit failed: %s", error)
            return
        for offset in offsets:
            self._tracker.mark_committed(
                TopicPartition(offset.topic, offset.partition), offset.offset
            )

    def _settle_async(self, serve: Callable[[float], None], deadline: float) -> None:
        """Wait (serving callbacks) until earlier asynchronous commits are reported.

        An asynchronous commit queued while the coordinator was away can reach the broker
        after a later synchronous one and move the group's offsets back (seen after a broker
        restart: the final commit read back complete, then the old offsets again).
        """
        while self._async_pending > 0 and time.monotonic() < deadline:
            serve(0.1)
        if self._async_pending > 0:
            log.warning("%d asynchronous commits still unanswered", self._async_pending)

    def on_commit(self, error: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        """librdkafka's commit callback (served inside consume(); also for sync commits)."""
        if not self._in_sync_commit:
            self._async_pending = max(0, self._async_pending - 1)
        if error is None:
            self._on_success()
            return
        if error.code() == KafkaError._NO_OFFSET:
            return
        log.warning("commit of %s failed: %s; will retry", describe(partitions), error.str())
        for tp in partitions:
            self._tracker.commit_failed(TopicPartition(tp.topic, tp.partition))


def describe(partitions: Iterable[Any]) -> str:
    """``topic[partition], ...`` of Kafka or our TopicPartitions, sorted; ``(none)``."""
    items = sorted(f"{p.topic}[{p.partition}]" for p in partitions)
    return ", ".join(items) if items else "(none)"
