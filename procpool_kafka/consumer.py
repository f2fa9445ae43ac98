"""ProcPoolConsumer: the poll loop and the rebalance callbacks; it wires the other modules.

Data flow (one thread of the consumer process owns all of it; see docs/architecture.md)::

    consume() --Message--> _accept --Record--> Dispatcher --batches--> WorkerPool --> workers
       |                     |  tracker.received()                        |
       |                     '-- paused partition: discard, seek back     | RecordFinished /
       |                        on resume (PauseBook)                     | RecordAborted
       |                                                                  v
       |  on_assign / on_revoke / on_lost             _handle_event: fence by task id, then
       |   revoke: cancel unstarted, drain running      ok -> tracker.done()
       |   until revoke_timeout, kill the rest          failed -> log, tracker.done()
       |   (Supervisor), commit sync, forget            crashed -> re-dispatch or WorkerCrashed
       |                                                  (cancelled: left to the next owner)
       v
    commit(async, every commit_interval) <-- tracker.commits_due()

Invariants kept here: offsets are committed only up to the contiguous done prefix
(OffsetTracker); nothing is committed for a partition after it was revoked or lost, and
outcomes of an earlier assignment are ignored (each in-flight record remembers the pool task
that runs it); the loop never blocks for long except the revoke drain (bounded by
revoke_timeout); at most max_in_flight records are queued or running.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import cloudpickle
from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition

from procpool_kafka.broker_health import STATS_INTERVAL_MS, BrokerHealth
from procpool_kafka.cluster_check import check_cluster
from procpool_kafka.committer import Committer, describe
from procpool_kafka.config import ConsumerConfig, redact
from procpool_kafka.dispatch import BatchSizer, Dispatcher
from procpool_kafka.errors import (
    BrokerUnavailableError,
    ConfigError,
    EndNotCommittedError,
    HandlerLoadError,
    KafkaCallError,
    WorkerCrashed,
)
from procpool_kafka.librdkafka_log import with_librdkafka_logger
from procpool_kafka.metrics import Counters, PartitionState, RunSummary, Snapshot
from procpool_kafka.offsets import OffsetTracker
from procpool_kafka.pausing import PauseBook, PauseReason
from procpool_kafka.pool import PoolEvent, RecordAborted, RecordFinished, WorkerPool
from procpool_kafka.records import (
    HandlerError,
    Record,
    RecordId,
    RunningRecord,
    TopicPartition,
    message_headers,
    now_ms,
    record_from_message,
    record_id,
)
from procpool_kafka.retry.headers import MalformedRetryHeaders, RetryInfo, read_retry_headers
from procpool_kafka.retry.policy import Decision, Route
from procpool_kafka.retry.router import FailureRouter
from procpool_kafka.retry.schedule import DelaySchedule
from procpool_kafka.supervisor import KillReason, Supervisor, running_in
from procpool_kafka.until_end import BatchRun

log = logging.getLogger(__name__)

Handler = Callable[[Record], object]

#: consume() timeout while the pool has work (outcomes are collected between polls)
BUSY_POLL_SECONDS = 0.01
#: consume() timeout when there is nothing in flight
IDLE_POLL_SECONDS = 0.1
#: most messages taken from one consume() call
MAX_CONSUME_BATCH = 1000
#: at max_in_flight the loop first just stops fetching (librdkafka keeps what it prefetched);
#: only when that lasts this long are the partitions paused, so that consume() can be called
#: again (rebalance callbacks, max.poll.interval.ms) without taking more records. A pause costs
#: librdkafka's prefetched records and about 0.7 s of refetch latency on resume (measured), so
#: light handlers must not pay it on every fill.
PAUSE_AFTER_FULL_SECONDS = 1.0
#: resume backpressure-paused partitions when in-flight falls to this share of max_in_flight
RESUME_FRACTION = 0.75
#: seconds between snapshots published for the metrics endpoint
SNAPSHOT_INTERVAL = 1.0
#: how long a drain waits on the pool per round
DRAIN_COLLECT_SECONDS = 0.05
#: after a drain's deadline, how long it waits for the killed work to report before giving up
KILL_SETTLE_SECONDS = 5.0
#: close() waits revoke_timeout + KILL_SETTLE_SECONDS + this for librdkafka's close (its
#: revoke callback drains, then commits for up to 10 s)
CLOSE_MARGIN_SECONDS = 20.0


@dataclass
class _InFlight:
    """A received record that is not done yet."""

    record: Record
    task_id: int | None = None  # pool task running it; None while waiting to be dispatched
    crashes: int = 0
    retry_info: RetryInfo | None = None  # what its retry headers said (retry topics only)


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
        self._inflight: dict[RecordId, _InFlight] = {}
        self._owned: set[TopicPartition] = set()
        self._draining: set[TopicPartition] = set()  # being revoked or stopped right now
        self._backpressure = False
        self._full_since: float | None = None
        self._pool: WorkerPool | None = None
        self._consumer: Consumer | None = None
        self._dispatcher: Dispatcher | None = None
        self._pauses: PauseBook | None = None
        self._router: FailureRouter | None = None
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
        self._snapshot: Snapshot | None = None
        self._last_snapshot = 0.0
        self._running = False
        self._force_stop = False
        self._batch: BatchRun | None = None  # the batch run in progress (until_end)
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
        return [] if self._pool is None else self._pool.pids()

    def assignment(self) -> list[TopicPartition]:
        """The partitions this consumer owns now."""
        return sorted(self._owned)

    def paused(self) -> list[TopicPartition]:
        """The owned partitions that are paused now (backpressure or a record not yet due)."""
        return [] if self._pauses is None else sorted(self._pauses.paused())

    def open(self) -> None:
        """Check the cluster and topics, start the worker pool, subscribe."""
        if self._consumer is not None:
            return
        check_cluster(self._config)
        pool = WorkerPool(
            self._handler,
            self._config.worker_count,
            max_tasks_per_worker=self._config.max_tasks_per_worker,
            max_worker_rss_mb=self._config.max_worker_rss_mb,
        )
        pool.start()
        self._pool = pool
        self._dispatcher = Dispatcher(pool, self._sizer, self._config.max_in_flight)
        self._router = FailureRouter(
            self._retry_policies,
            self._config.group_id,
            with_librdkafka_logger(self._config.producer_settings(), "producer"),
            self._routed,
            self._counters,
        )
        try:
            self._router.start()  # invalid producer settings fail here, not at a first failure
            consumer = Consumer(self._kafka_settings())
        except ConfigError:
            pool.terminate()
            raise
        except KafkaException as error:
            pool.terminate()
            raise ConfigError(f"invalid Kafka consumer settings: {error}") from error
        self._consumer = consumer
        self._committer.attach(consumer)
        self._pauses = PauseBook(self._pause, self._resume, self._seek)
        consumer.subscribe(
            self._config.subscribed_topics(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "consuming %s as group %r with %d workers",
            ", ".join(self._config.subscribed_topics()),
            self._config.group_id,
            pool.size,
        )

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
        """(records handled, records to handle) of a batch run, or None outside one."""
        if self._batch is None:
            return None
        handled = sum(self._counters.succeeded.values()) + sum(self._counters.failed.values())
        return handled, self._batch.targets.total

    def close(self) -> None:
        """Leave the group and stop the workers (after ``run()`` returned, or instead of it)."""
        if self._closed:
            return
        self._closed = True
        if self._consumer is not None:
            self._close_kafka_consumer(self._consumer)
        if self._router is not None:
            self._router.close()
        if self._pool is not None:
            self._pool.close()

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
        self._batch = None
        if until_end:
            self._batch = BatchRun.start(self._require_consumer(), self._config, wait_retries)
            log.info(
                "batch run: %d records in %d partitions to reach the end",
                self._batch.targets.total,
                len(self._batch.targets.remaining()),
            )
        self._running = True
        reached_end = False
        try:
            try:
                while not self._stop_requested.is_set():
                    self._step()
                    if self._batch is not None and self._batch_complete():
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
        committed = self._batch.commit_report() if reached_end and self._batch else None
        summary = self._counters.summary(time.monotonic() - started, since=baseline)
        summary = dataclasses.replace(summary, end_commit=committed)
        log.info("stopped: %s", summary.describe())
        if committed is not None and not committed.complete:
            raise EndNotCommittedError(
                f"reached the end, but the final commit fell short: {committed.describe()}",
                summary,
            )
        return summary

    def _batch_complete(self) -> bool:
        assert self._batch is not None
        return self._batch.complete(self._tracker.position, self._owned)

    def _step(self) -> None:
        pool, consumer = self._require_pool(), self._require_consumer()
        if self._health.down_for() > self._config.broker_timeout:
            raise BrokerUnavailableError(
                f"Kafka at {self._config.bootstrap_servers} unreachable for more than "
                f"{self._config.broker_timeout:g}s: {self._health.last_error}"
            )
        self._serve_work(0)
        self._apply_backpressure()
        capacity = self._config.max_in_flight - len(self._inflight)
        wait = IDLE_POLL_SECONDS
        next_due = self._schedule.next_due_ms()
        if next_due is not None:
            wait = min(wait, max(0.0, (next_due - now_ms()) / 1000))
        if capacity <= 0 and not self._backpressure:
            # full: take nothing more for now, wait for outcomes (see PAUSE_AFTER_FULL_SECONDS)
            self._handle_events(pool.collect(min(wait, BUSY_POLL_SECONDS * 5)))
            messages = []
        elif capacity <= 0 or self._all_paused():
            # nothing to fetch: wait on the workers instead, then let librdkafka serve callbacks
            self._handle_events(pool.collect(wait if pool.outstanding() else 0))
            messages = consumer.consume(1, timeout=0 if pool.outstanding() else wait)
        elif pool.outstanding():
            # the workers need feeding more than the broker needs waiting for: block on the
            # pool (outcomes wake it), then take whatever librdkafka has without waiting
            self._handle_events(pool.collect(min(wait, BUSY_POLL_SECONDS)))
            messages = consumer.consume(min(capacity, MAX_CONSUME_BATCH), timeout=0)
        else:
            messages = consumer.consume(min(capacity, MAX_CONSUME_BATCH), timeout=wait)
        self._accept(messages)
        self._committer.commit_if_due(self._require_pauses().is_paused)

    def _serve_work(self, collect_timeout: float) -> None:
        """The part of a loop step that a rebalance drain shares: snapshots, outcomes,
        retry/DLQ acknowledgements, due retries, deadline checks, dispatch."""
        if time.monotonic() - self._last_snapshot >= SNAPSHOT_INTERVAL:
            self._publish_snapshot()
        self._handle_events(self._require_pool().collect(collect_timeout))
        self._require_router().poll()
        self._release_due()
        self._supervise()
        self._require_dispatcher().fill(self._submitted)

    def _all_paused(self) -> bool:
        pauses = self._require_pauses()
        return bool(self._owned) and all(pauses.is_paused(tp) for tp in self._owned)

    def _accept(self, messages: list[Message]) -> None:
        if messages:
            self._health.mark_up()
        pauses = self._require_pauses()
        dispatcher = self._require_dispatcher()
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_message_error(error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            tp = TopicPartition(topic, partition)
            if tp not in self._owned:
                continue
            if pauses.is_paused(tp) or len(self._inflight) >= self._config.max_in_flight:
                # pause() does not un-deliver what was already fetched: fetch it again later
                pauses.discarded(tp, offset)
                if not pauses.is_paused(tp):
                    pauses.pause([tp], PauseReason.BACKPRESSURE)
                    self._backpressure = True
                continue
            retry_info = self._retry_info(message, topic)
            attempt = 1 if retry_info is None else retry_info.attempt
            record = record_from_message(message, attempt=attempt)
            self._tracker.received(tp, offset)
            self._inflight[(topic, partition, offset)] = _InFlight(record, retry_info=retry_info)
            self._counters.consumed[topic] += 1
            if retry_info is not None and retry_info.not_before_ms > now_ms():
                # not due: hold it here and pause its partition until it is
                log.debug("holding %r until %d", record, retry_info.not_before_ms)
                self._schedule.hold(tp, record, retry_info.not_before_ms)
                pauses.pause([tp], PauseReason.NOT_DUE)
            else:
                dispatcher.enqueue(record)

    def _retry_info(self, message: Message, topic: str) -> RetryInfo | None:
        """Our retry headers, honoured on configured retry topics only (invariant 6)."""
        policy = self._retry_policies.for_retry_topic(topic)
        if policy is None:
            return None
        now = now_ms()
        try:
            return read_retry_headers(message_headers(message), now, policy.backoff.max_delay)
        except MalformedRetryHeaders as error:
            log.warning(
                "%s[%s]@%s has malformed retry headers (%s); treating it as its last attempt",
                topic,
                message.partition(),
                message.offset(),
                error,
            )
            return RetryInfo(policy.max_attempts, now, None, None, None, None)

    def _release_due(self) -> None:
        """Dispatch held retry records whose not-before passed; resume their partitions."""
        if not len(self._schedule):
            return
        due = self._schedule.pop_due(now_ms())
        for record in due:
            log.debug("%r is due", record)
            self._require_dispatcher().enqueue(record)
        if due:
            self._require_pauses().release(
                [record.topic_partition for record in due], PauseReason.NOT_DUE
            )

    def _on_message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaCallError(f"fatal Kafka consumer error: {error.str()}")
        log.warning("consumer error: %s", error.str())

    def _submitted(self, task_id: int, records: list[Record]) -> None:
        for record in records:
            entry = self._inflight.get(record_id(record))
            if entry is not None:
                entry.task_id = task_id

    # ------------------------------------------------------------------ outcomes

    def _handle_events(self, events: Iterable[PoolEvent]) -> None:
        for event in events:
            entry = self._inflight.get(record_id(event.record))
            if entry is None or entry.task_id != event.task_id:
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
                self._on_aborted(entry, event)

    def _on_aborted(self, entry: _InFlight, event: RecordAborted) -> None:
        record = entry.record
        if event.killed:
            try:
                reason = KillReason(event.reason)
            except ValueError:
                reason = None
            failure = reason.failure if reason is not None else None
            if failure is not None:
                error = HandlerError.of_type(failure, f"worker {event.pid} killed: {event.reason}")
                self._fail(entry, error)
            else:
                # killed at a revoke, stop or loss deadline: not done, the next owner runs it
                self._inflight.pop(record_id(record), None)
            return
        self._counters.worker_crashes += 1
        if event.cancelled or record.topic_partition in self._draining:
            # its partition is being revoked (or the consumer stops): not done, not run here
            # again; the next owner (or the next run) handles it
            log.warning(
                "worker %d died (%s) running %r of a partition being given up; not run again here",
                event.pid,
                event.reason,
                record,
            )
            self._inflight.pop(record_id(record), None)
            return
        entry.crashes += 1
        if entry.crashes >= self._config.crash_limit:
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
            self._config.crash_limit,
        )
        entry.task_id = None
        self._require_dispatcher().requeue_front(record)

    def _fail(self, entry: _InFlight, error: HandlerError) -> None:
        """A handler attempt failed: the router copies it to a retry or dead-letter topic.

        The record stays in flight (its offset not done) until the copy is acknowledged.
        """
        entry.task_id = None
        self._require_router().route(entry.record, error, entry.retry_info)

    def _routed(self, record: Record, decision: Decision, copy: RecordId | None) -> None:
        """The failed record's copy was acknowledged (or it needs none): its offset is done."""
        entry = self._inflight.get(record_id(record))
        if entry is not None and entry.record is record:
            self._complete(entry)
        if self._batch is not None and copy is not None and decision.route is Route.RETRY:
            topic, partition, offset = copy
            self._batch.copy_made(TopicPartition(topic, partition), offset)

    def _complete(self, entry: _InFlight) -> None:
        record = entry.record
        self._inflight.pop(record_id(record), None)
        self._tracker.done(record.topic_partition, record.offset)

    # ------------------------------------------------------------------ supervision

    def _supervise(self) -> None:
        pool = self._require_pool()
        running = pool.running()
        if not running:
            return
        for order in self._supervisor.overdue(running, time.monotonic(), self._owned.__contains__):
            self._kill(order.reason, order.running)
        self._supervisor.prune_orphans(item.record.topic_partition for item in running)

    def _kill(self, reason: KillReason, running: RunningRecord) -> None:
        pid = running.pid
        if not self._require_pool().kill(pid, reason.value, running):
            return  # already being killed (the supervisor sees it running until it is gone)
        log.warning("killing worker %d running %r: %s", pid, running.record, reason.value)
        self._counters.worker_kills[reason.value] += 1

    def _apply_backpressure(self) -> None:
        pauses = self._require_pauses()
        in_flight = len(self._inflight)
        limit = self._config.max_in_flight
        if in_flight < limit:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = time.monotonic()
        if self._full_since is not None:
            if time.monotonic() - self._full_since >= PAUSE_AFTER_FULL_SECONDS:
                # full for a while: pause (also partitions assigned meanwhile) and poll again
                pauses.pause(self._owned, PauseReason.BACKPRESSURE)
                self._backpressure = True
        elif self._backpressure and in_flight <= int(limit * RESUME_FRACTION):
            pauses.release(pauses.paused_by(PauseReason.BACKPRESSURE), PauseReason.BACKPRESSURE)
            self._backpressure = False

    # ------------------------------------------------------------------ rebalancing

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self._health.mark_up()
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
        self._owned.update(tps)
        self._supervisor.adopt(tps)
        log.info("assigned: %s", describe(tps))

    def _on_revoke(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        if not tps:
            return
        self._counters.rebalances += 1
        log.info("revoked: %s; draining their running work", describe(tps))
        self._drain(tps, self._config.revoke_timeout, KillReason.REVOKE_TIMEOUT)
        self._committer.commit_sync(tps)
        self._forget(tps)

    def _on_lost(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        self._counters.rebalances += 1
        log.warning("lost: %s; their work is dropped without commit", describe(tps))
        self._require_dispatcher().drop(tps)
        self._schedule.drop(tps)
        self._require_pool().cancel(lambda record: record.topic_partition in tps)
        self._supervisor.orphan(tps, time.monotonic() + self._config.revoke_timeout)
        self._forget(tps)

    def _drain(self, tps: set[TopicPartition], timeout: float, reason: KillReason) -> None:
        """Drop unstarted work of ``tps``, wait for its running work, kill it at the deadline.

        Each round is the loop's own service step (`_serve_work`): kept partitions keep
        being dispatched and supervised (task timeout, heartbeats) and snapshots keep being
        published. The drain ends when every record of ``tps`` given to the pool has
        reported back and their retry/DLQ copies are acknowledged; at the latest
        ``KILL_SETTLE_SECONDS`` after the deadline (killed workers are SIGKILLed, so they
        are gone long before; what is still unsettled then stays uncommitted).
        """
        pool = self._require_pool()
        for record in [*self._require_dispatcher().drop(tps), *self._schedule.drop(tps)]:
            self._inflight.pop(record_id(record), None)
        pool.cancel(lambda record: record.topic_partition in tps)
        self._draining |= tps
        deadline = time.monotonic() + timeout
        try:
            while self._unsettled_tasks(tps) or self._require_router().pending(tps):
                now = time.monotonic()
                if self._force_stop:
                    deadline = min(deadline, now)  # a forced stop during a graceful drain
                if now >= deadline:
                    if now >= deadline + KILL_SETTLE_SECONDS:
                        log.error("work of %s did not settle after the kill", describe(tps))
                        break
                    for item in running_in(pool.running(), tps):
                        self._kill(reason, item)  # once per worker: pool.kill is idempotent
                self._serve_work(DRAIN_COLLECT_SECONDS)
            self._handle_events(pool.collect(0))  # outcomes already produced count
        finally:
            self._draining -= tps

    def _unsettled_tasks(self, tps: set[TopicPartition]) -> set[int]:
        """Pool tasks of ``tps`` whose records have not all reported back."""
        in_pool = self._require_pool().busy_task_ids()
        return {
            entry.task_id
            for entry in self._inflight.values()
            if entry.task_id is not None
            and entry.task_id in in_pool
            and entry.record.topic_partition in tps
        }

    def _forget(self, tps: set[TopicPartition]) -> None:
        """The partitions left this consumer (revoked or lost)."""
        self._drop_partition_state(tps)
        self._require_pauses().forget(tps)
        self._owned.difference_update(tps)

    def _drop_partition_state(self, tps: set[TopicPartition]) -> None:
        """Forget the records of ``tps`` in flight, their offsets and pending copies."""
        for key in [k for k, e in self._inflight.items() if e.record.topic_partition in tps]:
            del self._inflight[key]
        for tp in tps:
            self._tracker.forget(tp)
        self._require_router().forget(tps)

    def _serve_callbacks(self, seconds: float) -> None:
        """Poll for ``seconds`` so that librdkafka serves rebalances (records of paused
        partitions that still arrive are discarded and fetched again later)."""
        self._accept(self._require_consumer().consume(1, timeout=seconds))

    # ------------------------------------------------------------------ stopping

    def _shutdown(self) -> None:
        """Graceful stop: no new work, drain running work within revoke_timeout, commit."""
        timeout = 0.0 if self._force_stop else self._config.revoke_timeout
        log.info("stopping: draining running work (up to %gs)", timeout)
        owned = set(self._owned)
        if owned:
            self._require_pauses().pause(owned, PauseReason.STOPPING)
            self._drain(owned, timeout, KillReason.STOP_TIMEOUT)
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
        pauses = self._require_pauses()
        unfinished = {}
        for tp in self._owned:
            first = self._tracker.first_pending(tp)
            if first is not None:
                unfinished[tp] = first
        self._drop_partition_state(set(unfinished))
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
        pauses = self._pauses
        partitions = tuple(
            PartitionState(
                topic=tp.topic,
                partition=tp.partition,
                committed=self._tracker.committed(tp),
                position=self._tracker.position(tp),
                high_watermark=self._health.high_watermark(tp),
                paused=pauses is not None and pauses.is_paused(tp),
            )
            for tp in sorted(self._owned)
        )
        pool = self._pool
        self._snapshot = Snapshot(
            taken_at=time.time(),
            consumed=dict(counters.consumed),
            succeeded=dict(counters.succeeded),
            failed=dict(counters.failed),
            retried=dict(counters.retried),
            dead_lettered=dict(counters.dead_lettered),
            in_flight=len(self._inflight),
            partitions=partitions,
            worker_restarts=pool.restarts() if pool is not None else {},
            worker_kills=dict(counters.worker_kills),
            rebalances=counters.rebalances,
            durations=counters.durations.copy(),
            workers_configured=self._config.worker_count,
            workers_alive=len(pool.pids()) if pool is not None else 0,
            subscribed=self._consumer is not None and not self._closed,
            broker_reachable=self._health.reachable,
            running=self._running,
            producer_ok=self._router is None or self._router.healthy,
        )

    # ------------------------------------------------------------------ librdkafka actions

    def _pause(self, tps: list[TopicPartition]) -> None:
        self._require_consumer().pause([KafkaTopicPartition(t, p) for t, p in tps])

    def _resume(self, tps: list[TopicPartition]) -> None:
        self._require_consumer().resume([KafkaTopicPartition(t, p) for t, p in tps])

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._require_consumer().seek(KafkaTopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as error:
            log.warning("seek of %s[%d] to %d failed: %s", tp.topic, tp.partition, offset, error)

    # ------------------------------------------------------------------ accessors

    def _require_pool(self) -> WorkerPool:
        if self._pool is None:
            raise RuntimeError("the consumer is not open")
        return self._pool

    def _require_consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the consumer is not open")
        return self._consumer

    def _require_dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise RuntimeError("the consumer is not open")
        return self._dispatcher

    def _require_router(self) -> FailureRouter:
        if self._router is None:
            raise RuntimeError("the consumer is not open")
        return self._router

    def _require_pauses(self) -> PauseBook:
        if self._pauses is None:
            raise RuntimeError("the consumer is not open")
        return self._pauses

    def __repr__(self) -> str:
        settings = redact(self._config.kafka_config)
        return f"ProcPoolConsumer(group={self._config.group_id!r}, kafka_config={settings})"
