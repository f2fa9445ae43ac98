"""Rebalance: partitions coming and going (assign, revoke, lost) and the drain of their work.

librdkafka calls these from inside consume() (and close()), on the loop's thread::

    on_assign  resume what librdkafka still has paused, own the partitions
    on_revoke  drain (below), commit the done prefix synchronously, forget the partitions
    on_lost    drop their queued and held work, give running work a grace period (the
               supervisor kills it after revoke_timeout), forget them, commit nothing

A drain (at a revoke, and for every owned partition at a stop) drops the partitions' unstarted
work, cancels their tasks in the pool and gives their running work one deadline, owned by the
Supervisor. Each round of the drain is the loop's own service step, so kept partitions keep
being dispatched and supervised and snapshots keep being published. It ends when every record
of the partitions given to the pool has reported back and their retry/dead-letter copies are
acknowledged; at the latest KILL_SETTLE_SECONDS after the deadline (what is still unsettled
then stays uncommitted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from procpool_kafka.committer import Committer, describe
from procpool_kafka.dispatch import Dispatcher
from procpool_kafka.inflight import InFlightRecords, OutcomeHandler
from procpool_kafka.metrics import Counters
from procpool_kafka.offsets import OffsetTracker
from procpool_kafka.pausing import PauseBook
from procpool_kafka.pool import WorkerPool
from procpool_kafka.records import TopicPartition
from procpool_kafka.retry.router import FailureRouter
from procpool_kafka.retry.schedule import DelaySchedule
from procpool_kafka.supervisor import KillReason, Supervisor

log = logging.getLogger(__name__)

#: how long a drain waits on the pool per round
DRAIN_COLLECT_SECONDS = 0.05


@dataclass(frozen=True)
class PartitionWork:
    """Where the work of a partition lives while it is ours (what a drain or a loss clears)."""

    owned: set[TopicPartition]
    draining: set[TopicPartition]  # being revoked or stopped right now
    inflight: InFlightRecords
    tracker: OffsetTracker
    dispatcher: Dispatcher
    schedule: DelaySchedule
    pool: WorkerPool
    router: FailureRouter
    pauses: PauseBook
    outcomes: OutcomeHandler


class Rebalance:
    """The rebalance callbacks and the drain, sharing the loop's service step."""

    def __init__(
        self,
        work: PartitionWork,
        supervisor: Supervisor,
        committer: Committer,
        counters: Counters,
        revoke_timeout: float,
        *,
        serve_work: Callable[[float], None],
        forced: Callable[[], bool],
        on_assigned: Callable[[], None],
    ) -> None:
        self._work = work
        self._supervisor = supervisor
        self._committer = committer
        self._counters = counters
        self._revoke_timeout = revoke_timeout
        self._serve_work = serve_work
        self._forced = forced
        self._on_assigned = on_assigned

    # ------------------------------------------------------------------ callbacks

    def on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self._on_assigned()
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        if partitions:
            # librdkafka keeps a partition's pause flag when it is revoked while paused and
            # assigned again later (it never fetched again: test_pauses_across_rebalances);
            # a partition comes back unpaused, as our PauseBook forgot it
            try:
                consumer.resume(partitions)
            except KafkaException as error:
                log.debug("resuming newly assigned partitions: %s", error)
        self._counters.rebalances += 1
        self._work.owned.update(tps)
        self._supervisor.adopt(tps)
        log.info("assigned: %s", describe(tps))

    def on_revoke(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        if not tps:
            return
        self._counters.rebalances += 1
        log.info("revoked: %s; draining their running work", describe(tps))
        self.drain(tps, self._revoke_timeout, KillReason.REVOKE_TIMEOUT)
        self._committer.commit_sync(tps)
        self._forget(tps)

    def on_lost(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        self._counters.rebalances += 1
        log.warning("lost: %s; their work is dropped without commit", describe(tps))
        work = self._work
        work.dispatcher.drop(tps)
        work.schedule.drop(tps)
        work.pool.cancel(lambda record: record.topic_partition in tps)
        self._supervisor.orphan(tps, time.monotonic() + self._revoke_timeout)
        self._forget(tps)

    # ------------------------------------------------------------------ the drain

    def drain(self, tps: set[TopicPartition], timeout: float, reason: KillReason) -> None:
        """Drop unstarted work of ``tps``, wait for its running work; the supervisor kills
        what still runs at the deadline (see the module docstring)."""
        work = self._work
        for record in [*work.dispatcher.drop(tps), *work.schedule.drop(tps)]:
            work.inflight.remove(record)
        work.pool.cancel(lambda record: record.topic_partition in tps)
        work.draining.update(tps)
        self._supervisor.start_drain(tps, time.monotonic() + timeout, reason)
        try:
            while self._unsettled(tps):
                now = time.monotonic()
                if self._forced():
                    self._supervisor.hurry_drain(tps, now)  # a forced stop during a drain
                if self._supervisor.drain_given_up(tps, now):
                    log.error("work of %s did not settle after the kill", describe(tps))
                    break
                self._serve_work(DRAIN_COLLECT_SECONDS)
            work.outcomes.handle(work.pool.collect(0))  # outcomes already produced count
        finally:
            self._supervisor.end_drain(tps)
            work.draining.difference_update(tps)

    def _unsettled(self, tps: set[TopicPartition]) -> bool:
        """Records of ``tps`` still in the pool, or copies of them not acknowledged yet."""
        work = self._work
        in_pool = work.inflight.unsettled_tasks(tps, work.pool.busy_task_ids())
        return bool(in_pool) or bool(work.router.pending(tps))

    # ------------------------------------------------------------------ forgetting

    def _forget(self, tps: set[TopicPartition]) -> None:
        """The partitions left this consumer (revoked or lost)."""
        self.drop_partition_state(tps)
        self._work.pauses.forget(tps)
        self._work.owned.difference_update(tps)

    def drop_partition_state(self, tps: set[TopicPartition]) -> None:
        """Forget the records of ``tps`` in flight, their offsets and pending copies."""
        work = self._work
        work.inflight.drop(tps)
        for tp in tps:
            work.tracker.forget(tp)
        work.router.forget(tps)
