"""ProcPoolConsumer: the lifecycle and the loop step; it wires the other modules.

Data flow (one thread of the consumer process owns all of it; see docs/architecture.md)::

    consume() --Message--> Intake.accept --Record--> Dispatcher --tasks--> WorkerPool --> workers
       |                     | in flight (InFlightRecords),                  |
       |                     | tracker.received(); not-due retries held      | RecordFinished /
       |                     | (DelaySchedule); paused: discard, seek back   | RecordAborted
       |                     v on resume (PauseBook)                         v
       |                                                        OutcomeHandler.handle: fenced by
       |  Rebalance.on_assign / on_revoke / on_lost              task id; ok -> tracker.done();
       |   revoke: drain (drop unstarted, the Supervisor         failed -> FailureRouter (retry /
       |   kills what outlives revoke_timeout), commit sync,     DLQ copy), done when acked;
       |   forget                                                crashed -> dispatched again
       v
    Committer: async every commit_interval, sync at revoke and stop <-- tracker's done prefix

One step of the loop (``_step``) serves the work (``_serve_work``: snapshot, outcomes, retry
acknowledgements, due retries, deadlines, dispatch; a drain runs the same), applies
backpressure, then consumes as much as in-flight has room for, waiting on whichever side
(the pool or the broker) has something to say. A stop drains every owned partition like a
revoke, with ``revoke_timeout``, and commits.

Invariants kept by these modules: offsets are committed only up to the contiguous done prefix
(OffsetTracker); nothing is committed for a partition after it was revoked or lost, and
outcomes of an earlier assignment are ignored (InFlightRecords' task-id fence); the loop never
blocks for long except the revoke drain (bounded by revoke_timeout); at most max_in_flight
records are queued or running (Intake).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import cloudpickle
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from procpool_kafka.broker_health import STATS_INTERVAL_MS, BrokerHealth
from procpool_kafka.cluster_check import check_cluster
from procpool_kafka.committer import Committer
from procpool_kafka.config import ConsumerConfig, redact
from procpool_kafka.dispatch import BatchSizer, Dispatcher
from procpool_kafka.errors import (
    BrokerUnavailableError,
    ConfigError,
    EndNotCommittedError,
    HandlerLoadError,
)
from procpool_kafka.inflight import InFlightRecords, OutcomeHandler
from procpool_kafka.intake import Intake
from procpool_kafka.librdkafka_log import with_librdkafka_logger
from procpool_kafka.metrics import Counters, PartitionState, RunSummary, Snapshot
from procpool_kafka.offsets import OffsetTracker
from procpool_kafka.pausing import PauseBook, PauseReason
from procpool_kafka.pool import WorkerPool
from procpool_kafka.rebalance import PartitionWork, Rebalance
from procpool_kafka.records import Record, TopicPartition, now_ms
from procpool_kafka.retry.router import FailureRouter
from procpool_kafka.retry.schedule import DelaySchedule
from procpool_kafka.supervisor import KILL_SETTLE_SECONDS, KillReason, Supervisor
from procpool_kafka.until_end import UntilEndRun

log = logging.getLogger(__name__)

Handler = Callable[[Record], object]

#: consume() timeout while the pool has work (outcomes are collected between polls)
BUSY_POLL_SECONDS = 0.01
#: consume() timeout when there is nothing in flight
IDLE_POLL_SECONDS = 0.1
#: most messages taken from one consume() call
MAX_CONSUME_BATCH = 1000
#: seconds between snapshots published for the metrics endpoint
SNAPSHOT_INTERVAL = 1.0
#: close() waits revoke_timeout + KILL_SETTLE_SECONDS + this for librdkafka's close (its
#: revoke callback drains, then commits for up to 10 s)
CLOSE_MARGIN_SECONDS = 20.0


@dataclass(frozen=True)
class _Session:
    """What exists only between ``open()`` and ``close()``."""

    kafka: Consumer
    work: PartitionWork
    intake: Intake
    rebalance: Rebalance


class ProcPoolConsumer:
    """Consume topics and run ``handler(record)`` for each record in a process pool.

    ``run()`` blocks until ``stop()`` (thread-safe) is called, then drains running work within
    ``revoke_timeout``, commits and returns a :class:`RunSummary`.
    """

    def __init__(self, config: ConsumerConfig, handler: Handler) -> None:
        if not callable(handler):
            raise HandlerLoadError(f"handler {handler!r} is not callable")
        try:
            cloudpickle.dumps(handler)
        except Exception as error:
            raise HandlerLoadError(
                f"handler {getattr(handler, '__qualname__', handler)!r} cannot be pickled "
                f"for the worker processes: {error}"
            ) from error
        self._config = config
        self._handler = handler
        self._stop_requested = threading.Event()
        self._counters = Counters()
        self._tracker = OffsetTracker()
        self._supervisor = Supervisor(config.task_timeout, config.heartbeat_timeout)
        self._sizer = BatchSizer(config.batch_size, config.max_batch_size)
        self._inflight = InFlightRecords()
        self._owned: set[TopicPartition] = set()
        self._schedule = DelaySchedule()
        self._retry_policies = config.retry_policies
        self._health = BrokerHealth()
        self._committer = Committer(
            self._tracker,
            self._owned,
            config.commit_interval,
            config.connect_timeout,
            on_success=self._health.mark_up,
        )
        self._open: _Session | None = None
        self._snapshot: Snapshot | None = None
        self._last_snapshot = 0.0
        self._running = False
        self._force_stop = False
        self._until_end: UntilEndRun | None = None  # the until-end run in progress
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ProcPoolConsumer:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    @property
    def counters(self) -> Counters:
        return self._counters

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (empty before ``open()``)."""
        return [] if self._open is None else self._open.work.pool.pids()

    def assignment(self) -> list[TopicPartition]:
        """The partitions this consumer owns now."""
        return sorted(self._owned)

    def paused(self) -> list[TopicPartition]:
        """The owned partitions that are paused now (backpressure or a record not yet due)."""
        return [] if self._open is None else sorted(self._open.work.pauses.paused())

    def open(self) -> None:
        """Check the cluster and topics, start the worker pool, subscribe."""
        if self._open is not None:
            return
        check_cluster(self._config)
        pool = WorkerPool(
            self._handler,
            self._config.worker_count,
            max_tasks_per_worker=self._config.max_tasks_per_worker,
            max_worker_rss_mb=self._config.max_worker_rss_mb,
        )
        pool.start()
        dispatcher = Dispatcher(pool, self._sizer, self._config.max_in_flight)
        router = FailureRouter(
            self._retry_policies,
            self._config.group_id,
            with_librdkafka_logger(self._config.producer_settings(), "producer"),
            # acknowledgements arrive in router.poll(), once ``outcomes`` below exists
            lambda record, decision, copy: outcomes.routed(record, decision, copy),  # noqa: PLW0108
            self._counters,
        )
        try:
            router.start()  # invalid producer settings fail here, not at a first failure
            kafka = Consumer(self._kafka_settings())
        except ConfigError:
            pool.terminate()
            raise
        except KafkaException as error:
            pool.terminate()
            raise ConfigError(f"invalid Kafka consumer settings: {error}") from error
        self._committer.attach(kafka)
        draining: set[TopicPartition] = set()
        outcomes = OutcomeHandler(
            self._inflight,
            self._tracker,
            self._counters,
            self._sizer,
            self._config.crash_limit,
            draining=draining.__contains__,
            requeue=dispatcher.requeue_front,
            route=router.route,
            retry_copy_made=self._retry_copy_made,
        )
        work = PartitionWork(
            owned=self._owned,
            draining=draining,
            inflight=self._inflight,
            tracker=self._tracker,
            dispatcher=dispatcher,
            schedule=self._schedule,
            pool=pool,
            router=router,
            pauses=PauseBook(*_pause_actions(kafka)),
            outcomes=outcomes,
        )
        intake = Intake(
            work,
            retry_policies=self._retry_policies,
            counters=self._counters,
            max_in_flight=self._config.max_in_flight,
            on_messages=self._health.mark_up,
        )
        rebalance = Rebalance(
            work,
            self._supervisor,
            self._committer,
            self._counters,
            self._config.revoke_timeout,
            serve_work=self._serve_work,
            forced=lambda: self._force_stop,
            on_assigned=self._health.mark_up,
        )
        self._open = _Session(kafka, work, intake, rebalance)
        kafka.subscribe(
            self._config.subscribed_topics(),
            on_assign=rebalance.on_assign,
            on_revoke=rebalance.on_revoke,
            on_lost=rebalance.on_lost,
        )
        log.info(
            "consuming %s as group %r with %d workers",
            ", ".join(self._config.subscribed_topics()),
            self._config.group_id,
            pool.size,
        )

    def _session(self) -> _Session:
        if self._open is None:
            raise RuntimeError("the consumer is not open")
        return self._open

    def _kafka_settings(self) -> dict[str, Any]:
        settings = with_librdkafka_logger(self._config.librdkafka_settings(), "consumer")
        settings["on_commit"] = self._committer.on_commit
        settings["error_cb"] = self._health.on_error
        settings["stats_cb"] = self._health.on_stats
        settings.setdefault("statistics.interval.ms", STATS_INTERVAL_MS)
        return settings

    def stop(self, force: bool = False) -> None:
        """Ask ``run()`` to stop; safe to call from any thread or signal handler.

        Graceful by default: running work gets ``revoke_timeout`` to finish. With ``force``,
        running work is killed at once; what is done is still committed.
        """
        if force:
            self._force_stop = True
        self._stop_requested.set()

    def snapshot(self) -> Snapshot | None:
        """The latest published state (about once a second), for metrics and health."""
        return self._snapshot

    def progress(self) -> tuple[int, int] | None:
        """(records handled, records to handle) of an until-end run, or None outside one."""
        if self._until_end is None:
            return None
        handled = sum(self._counters.succeeded.values()) + sum(self._counters.failed.values())
        return handled, self._until_end.targets.total

    def close(self) -> None:
        """Leave the group and stop the workers (after ``run()`` returned, or instead of it)."""
        if self._closed:
            return
        self._closed = True
        if self._open is not None:
            self._close_kafka_consumer(self._open.kafka)
            self._open.work.router.close()
            self._open.work.pool.close()

    def _close_kafka_consumer(self, consumer: Consumer) -> None:
        """Leave the group (the revoke callback drains and commits), within a bounded time.

        Seen under the consumer group protocol after a broker restart: librdkafka's close
        waited forever inside the rebalance callback's set-up. Past the bound the member is
        left to the group's session timeout and the workers are stopped anyway.
        """
        bound = self._config.revoke_timeout + KILL_SETTLE_SECONDS + CLOSE_MARGIN_SECONDS
        failure: list[BaseException] = []

        def close() -> None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as error:
                failure.append(error)

        closer = threading.Thread(target=close, name="procpool-kafka-close", daemon=True)
        closer.start()
        closer.join(bound)
        if closer.is_alive():
            log.error(
                "closing the Kafka consumer did not finish within %.0fs; leaving the group "
                "to its session timeout",
                bound,
            )
        elif failure:
            log.warning("closing the Kafka consumer failed: %s", failure[0])

    # ------------------------------------------------------------------ the loop

    def run(self, until_end: bool = False, wait_retries: bool = False) -> RunSummary:
        """Consume until ``stop()``; then drain, commit and return what this run did.

        With ``until_end`` (batch mode), stop by itself once every partition of the subscribed
        topics (retry topics included) is committed up to its end offset as of the start of
        this call; raises :class:`EndNotCommittedError` when the final commit falls short.
        Retry copies produced during the run hold it open only with ``wait_retries``.
        ``run()`` may be called again (a warm pool for the next batch): each call computes
        fresh end targets and returns the summary of that call only. A KeyboardInterrupt
        stops it gracefully (a second one forces the stop), like SIGINT in the CLI.
        """
        self.open()
        started = time.monotonic()
        baseline = self._counters.copy()
        self._until_end = None
        if until_end:
            self._until_end = UntilEndRun.start(self._session().kafka, self._config, wait_retries)
            log.info(
                "batch run: %d records in %d partitions to reach the end",
                self._until_end.targets.total,
                len(self._until_end.targets.remaining()),
            )
        self._running = True
        reached_end = False
        try:
            try:
                while not self._stop_requested.is_set():
                    self._step()
                    if self._reached_end():
                        log.info("reached the end of every partition")
                        reached_end = True
                        break
            except KeyboardInterrupt:
                log.warning("KeyboardInterrupt: stopping gracefully (again to force)")
                self._stop_requested.set()
            self._shutdown_interruptibly()
            self._rewind_unfinished()
        finally:
            self._running = False
            self._stop_requested.clear()
            self._force_stop = False
            self._publish_snapshot()
        committed = self._until_end.commit_report() if reached_end and self._until_end else None
        summary = self._counters.summary(time.monotonic() - started, since=baseline)
        summary = dataclasses.replace(summary, end_commit=committed)
        log.info("stopped: %s", summary.describe())
        if committed is not None and not committed.complete:
            raise EndNotCommittedError(
                f"reached the end, but the final commit fell short: {committed.describe()}",
                summary,
            )
        return summary

    def _reached_end(self) -> bool:
        run = self._until_end
        return run is not None and run.complete(self._tracker.position, self._owned)

    def _retry_copy_made(self, tp: TopicPartition, offset: int) -> None:
        """A retry copy was acknowledged: an until-end run waits for it (``wait_retries``)."""
        if self._until_end is not None:
            self._until_end.copy_made(tp, offset)

    def _step(self) -> None:
        session = self._session()
        pool, kafka, intake = session.work.pool, session.kafka, session.intake
        if self._health.down_for() > self._config.broker_timeout:
            raise BrokerUnavailableError(
                f"Kafka at {self._config.bootstrap_servers} unreachable for more than "
                f"{self._config.broker_timeout:g}s: {self._health.last_error}"
            )
        self._serve_work(0)
        intake.apply_backpressure()
        capacity = intake.capacity()
        wait = IDLE_POLL_SECONDS
        next_due = self._schedule.next_due_ms()
        if next_due is not None:
            wait = min(wait, max(0.0, (next_due - now_ms()) / 1000))
        outcomes = session.work.outcomes
        if capacity <= 0 and not intake.backpressure:
            # full: take nothing more for now, wait for outcomes (see PAUSE_AFTER_FULL_SECONDS)
            outcomes.handle(pool.collect(min(wait, BUSY_POLL_SECONDS * 5)))
            messages = []
        elif capacity <= 0 or intake.all_paused():
            # nothing to fetch: wait on the workers instead, then let librdkafka serve callbacks
            outcomes.handle(pool.collect(wait if pool.outstanding() else 0))
            messages = kafka.consume(1, timeout=0 if pool.outstanding() else wait)
        elif pool.outstanding():
            # the workers need feeding more than the broker needs waiting for: block on the
            # pool (outcomes wake it), then take whatever librdkafka has without waiting
            outcomes.handle(pool.collect(min(wait, BUSY_POLL_SECONDS)))
            messages = kafka.consume(min(capacity, MAX_CONSUME_BATCH), timeout=0)
        else:
            messages = kafka.consume(min(capacity, MAX_CONSUME_BATCH), timeout=wait)
        intake.accept(messages)
        self._committer.commit_if_due(session.work.pauses.is_paused)

    def _serve_work(self, collect_timeout: float) -> None:
        """The part of a loop step that a rebalance drain shares: snapshots, outcomes,
        retry/DLQ acknowledgements, due retries, deadline checks, dispatch."""
        session = self._session()
        work = session.work
        if time.monotonic() - self._last_snapshot >= SNAPSHOT_INTERVAL:
            self._publish_snapshot()
        if work.draining:
            # a drain past its deadline kills first, before more finished work is collected
            self._supervise(work.pool)
        work.outcomes.handle(work.pool.collect(collect_timeout))
        work.router.poll()
        session.intake.release_due()
        self._supervise(work.pool)
        work.dispatcher.fill(self._inflight.submitted)

    def _supervise(self, pool: WorkerPool) -> None:
        running = pool.running()
        if not running:
            return
        for order in self._supervisor.overdue(running, time.monotonic(), self._owned.__contains__):
            if pool.kill(order.pid, order.reason, order.running):
                record = order.running.record
                log.warning("killing worker %d running %r: %s", order.pid, record, order.reason)
                self._counters.worker_kills[order.reason.value] += 1
            # else: already being killed (the supervisor sees it running until it is gone)
        self._supervisor.prune_orphans(item.record.topic_partition for item in running)

    def _serve_callbacks(self, seconds: float) -> None:
        """Poll for ``seconds`` so that librdkafka serves rebalances (records of paused
        partitions that still arrive are discarded and fetched again later)."""
        session = self._session()
        session.intake.accept(session.kafka.consume(1, timeout=seconds))

    # ------------------------------------------------------------------ stopping

    def _shutdown(self) -> None:
        """Graceful stop: no new work, drain running work within revoke_timeout, commit."""
        timeout = 0.0 if self._force_stop else self._config.revoke_timeout
        log.info("stopping: draining running work (up to %gs)", timeout)
        owned = set(self._owned)
        if owned:
            session = self._session()
            session.work.pauses.pause(owned, PauseReason.STOPPING)
            session.rebalance.drain(owned, timeout, KillReason.STOP_TIMEOUT)
            self._committer.commit_sync(owned, serve=self._serve_callbacks)

    def _shutdown_interruptibly(self) -> None:
        """``_shutdown``; a KeyboardInterrupt meanwhile forces it (running work is killed)."""
        while True:
            try:
                self._shutdown()
                return
            except KeyboardInterrupt:
                if self._force_stop:
                    raise
                log.warning("KeyboardInterrupt again: forcing the stop")
                self._force_stop = True

    def _rewind_unfinished(self) -> None:
        """After a run: fetch again, in a later run, what this one left unfinished.

        The stop dropped queued work, held retry records and killed what outlived the
        deadline; none of it is done, so none of it is committed. Each owned partition is
        sought back to its first unfinished offset and resumed, as a restart would resume
        from the commit, so that a later ``run()`` on this consumer sees those records again.
        """
        session = self._session()
        pauses = session.work.pauses
        unfinished = {}
        for tp in self._owned:
            first = self._tracker.first_pending(tp)
            if first is not None:
                unfinished[tp] = first
        session.rebalance.drop_partition_state(set(unfinished))
        for tp, first in unfinished.items():
            pauses.discarded(tp, first)  # sought back there when the pause is released
        owned = sorted(self._owned)
        pauses.release(owned, PauseReason.NOT_DUE)  # the held records were dropped
        pauses.release(owned, PauseReason.STOPPING)

    # ------------------------------------------------------------------ observability

    def _publish_snapshot(self) -> None:
        """Publish an immutable view of the state for other threads (metrics, health)."""
        self._last_snapshot = time.monotonic()
        counters = self._counters
        work = None if self._open is None else self._open.work
        partitions = tuple(
            PartitionState(
                topic=tp.topic,
                partition=tp.partition,
                committed=self._tracker.committed(tp),
                position=self._tracker.position(tp),
                high_watermark=self._health.high_watermark(tp),
                paused=work is not None and work.pauses.is_paused(tp),
            )
            for tp in sorted(self._owned)
        )
        self._snapshot = Snapshot(
            taken_at=time.time(),
            consumed=dict(counters.consumed),
            succeeded=dict(counters.succeeded),
            failed=dict(counters.failed),
            retried=dict(counters.retried),
            dead_lettered=dict(counters.dead_lettered),
            in_flight=len(self._inflight),
            partitions=partitions,
            worker_restarts=work.pool.restarts() if work is not None else {},
            worker_kills=dict(counters.worker_kills),
            rebalances=counters.rebalances,
            durations=counters.durations.copy(),
            workers_configured=self._config.worker_count,
            workers_alive=len(work.pool.pids()) if work is not None else 0,
            subscribed=work is not None and not self._closed,
            broker_reachable=self._health.reachable,
            running=self._running,
            producer_ok=work is None or work.router.healthy,
        )

    def __repr__(self) -> str:
        settings = redact(self._config.kafka_config)
        return f"ProcPoolConsumer(group={self._config.group_id!r}, kafka_config={settings})"


def _pause_actions(
    kafka: Consumer,
) -> tuple[
    Callable[[list[TopicPartition]], None],
    Callable[[list[TopicPartition]], None],
    Callable[[TopicPartition, int], None],
]:
    """librdkafka's pause, resume and seek, in our TopicPartition terms (for PauseBook)."""

    def pause(tps: list[TopicPartition]) -> None:
        kafka.pause([KafkaTopicPartition(t, p) for t, p in tps])

    def resume(tps: list[TopicPartition]) -> None:
        kafka.resume([KafkaTopicPartition(t, p) for t, p in tps])

    def seek(tp: TopicPartition, offset: int) -> None:
        try:
            kafka.seek(KafkaTopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as error:
            log.warning("seek of %s[%d] to %d failed: %s", tp.topic, tp.partition, offset, error)

    return pause, resume, seek
