"""ProcPoolConsumer: the poll loop and the rebalance callbacks; it wires the other modules.

Data flow (one thread of the consumer process owns all of it; see DESIGN.md)::

    consume() --Message--> _accept --Record--> Dispatcher --batches--> WorkerPool --> workers
       |                     |  tracker.received()                        |
       |                     '-- paused partition: discard, seek back     | RecordFinished /
       |                        on resume (PauseBook)                     | RecordAborted
       |                                                                  v
       |  on_assign / on_revoke / on_lost             _handle_event: fence by task id, then
       |   revoke: cancel unstarted, drain running      ok -> tracker.done()
       |   until revoke_timeout, kill the rest          failed -> log, tracker.done()
       |   (Supervisor), commit sync, forget            crashed -> re-dispatch or WorkerCrashed
       v
    commit(async, every commit_interval) <-- tracker.commits_due()

Invariants kept here: offsets are committed only up to the contiguous done prefix
(OffsetTracker); nothing is committed for a partition after it was revoked or lost, and
outcomes of an earlier assignment are ignored (each in-flight record remembers the pool task
that runs it); the loop never blocks for long except the revoke drain (bounded by
revoke_timeout); at most max_in_flight records are queued or running.
"""

from __future__ import annotations

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
from confluent_kafka.admin import AdminClient

from procpool_kafka.config import ConsumerConfig, redact
from procpool_kafka.dispatch import BatchSizer, Dispatcher
from procpool_kafka.errors import (
    BrokerUnavailableError,
    ConfigError,
    HandlerLoadError,
    TopicNotFoundError,
    WorkerCrashed,
)
from procpool_kafka.metrics import Counters, RunSummary
from procpool_kafka.offsets import OffsetTracker
from procpool_kafka.pausing import PauseBook, PauseReason
from procpool_kafka.pool import HandlerError, PoolEvent, RecordAborted, RecordFinished, WorkerPool
from procpool_kafka.records import Record, TopicPartition, record_from_message
from procpool_kafka.supervisor import KillReason, Supervisor, running_in

log = logging.getLogger(__name__)

Handler = Callable[[Record], object]
RecordKey = tuple[str, int, int]

#: consume() timeout while the pool has work (outcomes are collected between polls)
BUSY_POLL_SECONDS = 0.01
#: consume() timeout when there is nothing in flight
IDLE_POLL_SECONDS = 0.1
#: most messages taken from one consume() call
MAX_CONSUME_BATCH = 1000
#: resume backpressure-paused partitions when in-flight falls to this share of max_in_flight
RESUME_FRACTION = 0.75


@dataclass
class _InFlight:
    """A received record that is not done yet."""

    record: Record
    task_id: int | None = None  # pool task running it; None while waiting to be dispatched
    crashes: int = 0


def _key(record: Record) -> RecordKey:
    return (record.topic, record.partition, record.offset)


def _failure(failure_type: type[BaseException], message: str) -> HandlerError:
    return HandlerError(
        type_name=f"{failure_type.__module__}.{failure_type.__qualname__}",
        message=message,
        traceback="",
    )


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
        self._inflight: dict[RecordKey, _InFlight] = {}
        self._owned: set[TopicPartition] = set()
        self._backpressure = False
        self._last_commit = 0.0
        self._pool: WorkerPool | None = None
        self._consumer: Consumer | None = None
        self._dispatcher: Dispatcher | None = None
        self._pauses: PauseBook | None = None
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
        self._check_cluster()
        pool = WorkerPool(
            self._handler,
            self._config.worker_count,
            max_tasks_per_worker=self._config.max_tasks_per_worker,
            max_worker_rss_mb=self._config.max_worker_rss_mb,
        )
        pool.start()
        self._pool = pool
        self._dispatcher = Dispatcher(pool, self._sizer)
        try:
            consumer = Consumer(self._kafka_settings())
        except KafkaException as error:
            pool.terminate()
            raise ConfigError(f"invalid Kafka consumer settings: {error}") from error
        self._consumer = consumer
        self._pauses = PauseBook(self._pause, self._resume, self._seek)
        consumer.subscribe(
            list(self._config.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "consuming %s as group %r with %d workers",
            ", ".join(self._config.topics),
            self._config.group_id,
            pool.size,
        )

    def _kafka_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = dict(self._config.librdkafka_settings())
        settings["logger"] = logging.getLogger("procpool_kafka.librdkafka")
        settings["on_commit"] = self._on_commit
        return settings

    def _check_cluster(self) -> None:
        """Fail early and clearly: broker unreachable, or topics missing."""
        settings: dict[str, Any] = dict(self._config.client_settings())
        settings["logger"] = logging.getLogger("procpool_kafka.librdkafka")
        try:
            admin = AdminClient(settings)
        except KafkaException as error:
            raise ConfigError(f"invalid Kafka client settings: {error}") from error
        timeout = self._config.connect_timeout
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as error:
            raise BrokerUnavailableError(
                f"cannot reach Kafka at {self._config.bootstrap_servers} within {timeout:g}s: "
                f"{error.args[0].str() if error.args else error}"
            ) from error
        missing = [
            topic
            for topic in self._config.topics
            if topic not in metadata.topics or metadata.topics[topic].error is not None
        ]
        if missing:
            raise TopicNotFoundError(
                f"topic(s) not found on {self._config.bootstrap_servers}: {', '.join(missing)}"
            )

    def stop(self) -> None:
        """Ask ``run()`` to stop gracefully; safe to call from any thread or signal handler."""
        self._stop_requested.set()

    def close(self) -> None:
        """Leave the group and stop the workers (after ``run()`` returned, or instead of it)."""
        if self._closed:
            return
        self._closed = True
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as error:
                log.warning("closing the Kafka consumer failed: %s", error)
        if self._pool is not None:
            self._pool.close()

    # ------------------------------------------------------------------ the loop

    def run(self) -> RunSummary:
        """Consume until ``stop()``; then drain, commit and return what happened."""
        self.open()
        started = time.monotonic()
        while not self._stop_requested.is_set():
            self._step()
        self._shutdown()
        summary = self._counters.summary(time.monotonic() - started)
        log.info("stopped: %s", summary.describe())
        return summary

    def _step(self) -> None:
        pool, consumer = self._require_pool(), self._require_consumer()
        self._handle_events(pool.collect(0))
        self._supervise()
        self._require_dispatcher().fill(self._submitted)
        self._apply_backpressure()
        capacity = self._config.max_in_flight - len(self._inflight)
        if capacity <= 0 or self._all_paused():
            # nothing to fetch: wait on the workers instead, then let librdkafka serve callbacks
            self._handle_events(pool.collect(IDLE_POLL_SECONDS if pool.outstanding() else 0))
            messages = consumer.consume(1, timeout=0 if pool.outstanding() else IDLE_POLL_SECONDS)
        else:
            timeout = BUSY_POLL_SECONDS if pool.outstanding() else IDLE_POLL_SECONDS
            messages = consumer.consume(min(capacity, MAX_CONSUME_BATCH), timeout=timeout)
        self._accept(messages)
        self._commit_if_due()

    def _all_paused(self) -> bool:
        pauses = self._require_pauses()
        return bool(self._owned) and all(pauses.is_paused(tp) for tp in self._owned)

    def _accept(self, messages: list[Message]) -> None:
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
                pauses.discarded(tp, offset)
                pauses.pause([tp], PauseReason.BACKPRESSURE)
                self._backpressure = True
                continue
            record = record_from_message(message)
            self._tracker.received(tp, offset)
            self._inflight[(topic, partition, offset)] = _InFlight(record)
            self._counters.consumed[topic] += 1
            dispatcher.enqueue(record)

    def _on_message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error: %s", error.str())

    def _submitted(self, task_id: int, records: list[Record]) -> None:
        for record in records:
            entry = self._inflight.get(_key(record))
            if entry is not None:
                entry.task_id = task_id

    # ------------------------------------------------------------------ outcomes

    def _handle_events(self, events: Iterable[PoolEvent]) -> None:
        for event in events:
            entry = self._inflight.get(_key(event.record))
            if entry is None or entry.task_id != event.task_id:
                continue  # an outcome of an earlier assignment or dispatch: fenced
            if isinstance(event, RecordFinished):
                self._sizer.observe(event.duration)
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
                self._fail(entry, _failure(failure, f"worker {event.pid} killed: {event.reason}"))
            else:
                # killed at a revoke, stop or loss deadline: not done, the next owner runs it
                self._inflight.pop(_key(record), None)
            return
        self._counters.worker_crashes += 1
        entry.crashes += 1
        if entry.crashes >= self._config.crash_limit:
            message = (
                f"worker died {entry.crashes} times running this record (last: {event.reason})"
            )
            self._fail(entry, _failure(WorkerCrashed, message))
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
        """A record failed for good (until retry topics land): log it and mark it done."""
        record = entry.record
        self._counters.failed[record.topic] += 1
        log.error(
            "handler failed for %s[%d]@%d (attempt %d): %s: %s\n%s",
            record.topic,
            record.partition,
            record.offset,
            record.attempt,
            error.type_name,
            error.message,
            error.traceback,
        )
        self._complete(entry)

    def _complete(self, entry: _InFlight) -> None:
        record = entry.record
        self._inflight.pop(_key(record), None)
        self._tracker.done(record.topic_partition, record.offset)

    # ------------------------------------------------------------------ supervision

    def _supervise(self) -> None:
        pool = self._require_pool()
        running = pool.running()
        if not running:
            return
        for order in self._supervisor.overdue(running, time.monotonic(), self._owned.__contains__):
            self._kill(order.pid, order.reason, order.running.record)
        self._supervisor.prune_orphans(item.record.topic_partition for item in running)

    def _kill(self, pid: int, reason: KillReason, record: Record) -> None:
        log.warning("killing worker %d running %r: %s", pid, record, reason.value)
        self._counters.worker_kills[reason.value] += 1
        self._require_pool().kill(pid, reason.value)

    def _apply_backpressure(self) -> None:
        pauses = self._require_pauses()
        in_flight = len(self._inflight)
        limit = self._config.max_in_flight
        if in_flight >= limit:
            pauses.pause(self._owned, PauseReason.BACKPRESSURE)
            self._backpressure = True
        elif self._backpressure and in_flight <= int(limit * RESUME_FRACTION):
            pauses.release(pauses.paused_by(PauseReason.BACKPRESSURE), PauseReason.BACKPRESSURE)
            self._backpressure = False

    # ------------------------------------------------------------------ rebalancing

    def _on_assign(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        self._counters.rebalances += 1
        self._owned.update(tps)
        self._supervisor.adopt(tps)
        log.info("assigned: %s", _describe(tps))

    def _on_revoke(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        if not tps:
            return
        self._counters.rebalances += 1
        log.info("revoked: %s; draining their running work", _describe(tps))
        self._drain(tps, self._config.revoke_timeout, KillReason.REVOKE_TIMEOUT)
        self._commit_sync(tps)
        self._forget(tps)

    def _on_lost(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in partitions}
        self._counters.rebalances += 1
        log.warning("lost: %s; their work is dropped without commit", _describe(tps))
        self._require_dispatcher().drop(tps)
        self._require_pool().cancel(lambda record: record.topic_partition in tps)
        self._supervisor.orphan(tps, time.monotonic() + self._config.revoke_timeout)
        self._forget(tps)

    def _drain(self, tps: set[TopicPartition], timeout: float, reason: KillReason) -> None:
        """Drop unstarted work of ``tps``, wait for its running work, kill it at the deadline."""
        pool = self._require_pool()
        dispatcher = self._require_dispatcher()
        for record in dispatcher.drop(tps):
            self._inflight.pop(_key(record), None)
        pool.cancel(lambda record: record.topic_partition in tps)
        deadline = time.monotonic() + timeout
        killed: set[int] = set()
        while True:
            unsettled = self._unsettled_tasks(tps)
            if not unsettled:
                break
            now = time.monotonic()
            if now >= deadline:
                for item in running_in(pool.running(), tps):
                    if item.pid not in killed:
                        killed.add(item.pid)
                        self._kill(item.pid, reason, item.record)
                if not running_in(pool.running(), tps) and not killed:
                    break  # nothing runs any more; what is left was cancelled unstarted
                if now >= deadline + 10.0:
                    log.error("workers of %s did not settle after the kill", _describe(tps))
                    break
            self._handle_events(pool.collect(0.05))
            dispatcher.fill(self._submitted)  # kept partitions keep running meanwhile

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
        for key in [k for k, e in self._inflight.items() if e.record.topic_partition in tps]:
            del self._inflight[key]
        for tp in tps:
            self._tracker.forget(tp)
        self._require_pauses().forget(tps)
        self._owned.difference_update(tps)

    # ------------------------------------------------------------------ commits

    def _commit_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_commit < self._config.commit_interval:
            return
        self._last_commit = now
        due = self._tracker.commits_due(self._owned)
        if not due:
            return
        offsets = [KafkaTopicPartition(tp.topic, tp.partition, pos) for tp, pos in due.items()]
        try:
            self._require_consumer().commit(offsets=offsets, asynchronous=True)
        except KafkaException as error:
            log.warning("asynchronous commit failed: %s", error)
            return
        for tp, position in due.items():
            self._tracker.mark_committed(tp, position)

    def _commit_sync(self, tps: Iterable[TopicPartition]) -> None:
        offsets = []
        for tp in tps:
            position = self._tracker.position(tp)
            if position is not None:
                offsets.append(KafkaTopicPartition(tp.topic, tp.partition, position))
        if not offsets:
            return
        try:
            self._require_consumer().commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            log.warning("synchronous commit of %s failed: %s", _describe(offsets), error)
            return
        for offset in offsets:
            self._tracker.mark_committed(
                TopicPartition(offset.topic, offset.partition), offset.offset
            )

    def _on_commit(self, error: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        if error is None:
            return
        if error.code() == KafkaError._NO_OFFSET:
            return
        log.warning("commit of %s failed: %s; will retry", _describe(partitions), error.str())
        for tp in partitions:
            self._tracker.commit_failed(TopicPartition(tp.topic, tp.partition))

    # ------------------------------------------------------------------ stopping

    def _shutdown(self) -> None:
        """Graceful stop: no new work, drain running work within revoke_timeout, commit."""
        log.info("stopping: draining running work (up to %gs)", self._config.revoke_timeout)
        owned = set(self._owned)
        if owned:
            self._require_pauses().pause(owned, PauseReason.BACKPRESSURE)
            self._drain(owned, self._config.revoke_timeout, KillReason.STOP_TIMEOUT)
            self._commit_sync(owned)

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

    def _require_pauses(self) -> PauseBook:
        if self._pauses is None:
            raise RuntimeError("the consumer is not open")
        return self._pauses

    def __repr__(self) -> str:
        settings = redact(self._config.kafka_config)
        return f"ProcPoolConsumer(group={self._config.group_id!r}, kafka_config={settings})"


def _describe(partitions: Iterable[Any]) -> str:
    items = sorted(f"{p.topic}[{p.partition}]" for p in partitions)
    return ", ".join(items) if items else "(none)"
