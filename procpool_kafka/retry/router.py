"""FailureRouter: sends failed records to their retry or dead-letter topic, acknowledged.

    failed record --decide()--> RETRY:       copy -> retry tier (attempt + 1, not-before)
                                DEAD_LETTER: copy -> dead-letter topic (error headers)
                                DROP:        log at ERROR, done at once (no DLQ configured)
    copy --produce (idempotent, acks=all)--> delivery report --ok--> done(record)
                                                             --error--> produce again later

The original offset counts as done only when the broker acknowledged the copy; while a
produce keeps failing it is retried with backoff and the offset stays not done, so commits
cannot pass it. A copy the broker can never take (larger than message.max.bytes) is not
retried forever: a retry copy goes to the dead-letter topic instead, and a dead-letter copy
that cannot be written is logged at ERROR with its coordinates and marked done.

A fatal producer error (librdkafka's ``error.fatal()``: e.g. OUT_OF_ORDER_SEQUENCE, or
CLUSTER_AUTHORIZATION_FAILED when the idempotent producer starts) makes every later produce
fail. The router then replaces the producer: its copies in flight are fenced off (their late
reports are ignored) and produced again with the new one; the originals stay not done until
acknowledged. After ``MAX_PRODUCER_REPLACEMENTS`` fatal errors with no copy acknowledged in
between, poll() raises ProducerFailedError and the run ends with that error.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from procpool_kafka.errors import ConfigError, ProducerFailedError
from procpool_kafka.metrics import Counters
from procpool_kafka.records import (
    HandlerError,
    Headers,
    Record,
    RecordId,
    TopicPartition,
    now_ms,
    record_id,
)
from procpool_kafka.retry.headers import RetryInfo, copy_headers
from procpool_kafka.retry.policy import Decision, RetryPolicies, Route, decide

log = logging.getLogger(__name__)

#: first and largest wait before a failed produce of a copy is tried again
PRODUCE_RETRY_INITIAL_S = 0.5
PRODUCE_RETRY_MAX_S = 30.0
#: fatal producer errors in a row (no copy acknowledged in between) before the run ends
MAX_PRODUCER_REPLACEMENTS = 3

ProducerFactory = Callable[[dict[str, Any]], Producer]


def _log_retry(copy: _Copy) -> None:
    not_before = (copy.decision.not_before_ms or 0) / 1000
    log.info(
        "%s failed (attempt %d: %s: %s); retrying via %s not before %s",
        copy.record,
        copy.record.attempt,
        copy.error.type_name,
        copy.error.message,
        copy.decision.topic,
        time.strftime("%H:%M:%S", time.localtime(not_before)),
    )


@dataclass
class _Copy:
    """A copy of a failed record on its way to a retry or dead-letter topic."""

    record: Record
    decision: Decision
    headers: Headers
    error: HandlerError
    retry_info: RetryInfo | None = None
    failures: int = 0
    next_try: float = 0.0  # time.monotonic() when the next produce may start
    in_flight: bool = False


#: done(record, decision, copy): the record's offset may count as done; ``copy`` is the
#: (topic, partition, offset) of its acknowledged copy, or None when no copy was written
DoneCallback = Callable[[Record, Decision, RecordId | None], None]


class FailureRouter:
    """Routes failed records by their topic's RetryPolicy; reports each as done when safe."""

    def __init__(
        self,
        policies: RetryPolicies,
        group_id: str,
        producer_settings: dict[str, Any],
        done: DoneCallback,
        counters: Counters,
        *,
        producer_factory: ProducerFactory = Producer,
    ) -> None:
        self._policies = policies
        self._group_id = group_id
        self._user_error_cb = producer_settings.get("error_cb")
        self._producer_settings = {**producer_settings, "error_cb": self._on_producer_error}
        self._done = done
        self._counters = counters
        self._producer_factory = producer_factory
        self._producer: Producer | None = None
        self._generation = 0  # bumped when the producer is replaced: fences late reports
        self._fatal: KafkaError | None = None  # a fatal error not yet acted on
        self._fatal_in_a_row = 0
        self._copies: dict[RecordId, _Copy] = {}

    # ------------------------------------------------------------------ routing

    def route(
        self,
        record: Record,
        error: HandlerError,
        retry_info: RetryInfo | None,
    ) -> None:
        """Send ``record`` where its policy says; ``done`` is called once it is safe."""
        now = now_ms()
        policy = self._policies.for_consumed_topic(record.topic)
        decision = decide(policy, record.attempt, error.type_names, now)
        self._counters.failed[record.topic] += 1
        if decision.route is Route.DROP:
            self._log_failure(record, error, "no dead-letter topic: marking it done")
            self._done(record, decision, None)
            return
        headers = self._headers(record, error, decision, retry_info, now)
        copy = _Copy(record, decision, headers, error, retry_info)
        self._copies[record_id(record)] = copy
        if decision.route is Route.DEAD_LETTER:
            self._log_failure(record, error, f"sending it to dead-letter topic {decision.topic}")
        self._produce(copy)  # a retry is logged once its copy is acknowledged

    def _headers(
        self,
        record: Record,
        error: HandlerError,
        decision: Decision,
        retry_info: RetryInfo | None,
        now_ms: int,
    ) -> Headers:
        policy = self._policies.for_consumed_topic(record.topic)
        assert policy is not None
        return copy_headers(
            record,
            error,
            decision,
            retry_info,
            policy=policy,
            consumer_group=self._group_id,
            now_ms=now_ms,
        )

    def _log_failure(self, record: Record, error: HandlerError, what: str) -> None:
        log.error(
            "handler failed for %s[%d]@%d (attempt %d): %s: %s; %s\n%s",
            record.topic,
            record.partition,
            record.offset,
            record.attempt,
            error.type_name,
            error.message,
            what,
            error.traceback,
        )

    # ------------------------------------------------------------------ producing

    def start(self) -> None:
        """Create the producer now when a policy can copy records (retry or dead-letter topic).

        Invalid producer settings then raise ConfigError at open, instead of failing every
        produce of the first failed record (never routed, its offset held back for good).
        """
        if not any(policy.retry_topics or policy.dlq_topic for policy in self._policies):
            return
        try:
            self._require_producer()
        except KafkaException as error:
            raise ConfigError(f"invalid Kafka producer settings: {error}") from error

    def _require_producer(self) -> Producer:
        if self._producer is None:
            self._producer = self._producer_factory(self._producer_settings)
        return self._producer

    @property
    def healthy(self) -> bool:
        """False from a fatal producer error until a copy is acknowledged again."""
        return self._fatal is None and self._fatal_in_a_row == 0

    def _on_producer_error(self, error: KafkaError) -> None:
        """librdkafka's error_cb (served inside poll()): remember a fatal error."""
        if error.fatal():
            self._fatal = error
        if self._user_error_cb is not None:
            self._user_error_cb(error)

    def _replace_producer(self, error: KafkaError) -> None:
        """Drop the failed producer; its unacknowledged copies are produced by a new one."""
        self._fatal = None
        self._fatal_in_a_row += 1
        if self._fatal_in_a_row > MAX_PRODUCER_REPLACEMENTS:
            raise ProducerFailedError(
                f"the retry/dead-letter producer failed fatally {self._fatal_in_a_row} times "
                f"in a row (last: {error.str()}); failed records cannot be copied, their "
                "offsets stay uncommitted"
            )
        log.error(
            "the retry/dead-letter producer failed fatally (%s); replacing it (%d/%d), "
            "its unacknowledged copies are produced again",
            error.str(),
            self._fatal_in_a_row,
            MAX_PRODUCER_REPLACEMENTS,
        )
        old, self._producer = self._producer, None
        self._generation += 1
        if old is not None:
            old.purge()  # its reports, if any, arrive under the old generation: ignored
        for copy in self._copies.values():
            copy.in_flight = False
            copy.next_try = 0.0

    def _produce(self, copy: _Copy) -> None:
        record = copy.record
        assert copy.decision.topic is not None
        copy.in_flight = True
        headers: list[tuple[str, str | bytes | None]] = list(copy.headers)
        generation = self._generation
        try:
            self._require_producer().produce(
                copy.decision.topic,
                value=record.value,
                key=record.key,
                headers=headers,
                on_delivery=lambda error, message: self._delivered(
                    copy, error, message, generation
                ),
            )
        except BufferError:
            copy.in_flight = False
            copy.next_try = time.monotonic() + 0.05  # local queue full: try again shortly
        except KafkaException as error:
            self._delivered(copy, error.args[0] if error.args else None, None, generation)

    def _delivered(
        self, copy: _Copy, error: KafkaError | None, message: Message | None, generation: int
    ) -> None:
        if generation != self._generation:
            return  # a report of a replaced producer: the copy was produced again
        copy.in_flight = False
        key = record_id(copy.record)
        if self._copies.get(key) is not copy:
            return  # the partition was revoked meanwhile: its outcome no longer counts
        if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
            self._fatal = self._fatal or error  # replaced in poll(), then produced again
            return
        if error is None:
            self._fatal_in_a_row = 0
            del self._copies[key]
            counter = (
                self._counters.retried
                if copy.decision.route is Route.RETRY
                else self._counters.dead_lettered
            )
            counter[copy.record.topic] += 1
            if copy.decision.route is Route.RETRY:
                _log_retry(copy)
            written = None
            if message is not None:
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                if topic is not None and partition is not None and offset is not None:
                    written = (topic, partition, offset)
            self._done(copy.record, copy.decision, written)
            return
        self._counters.produce_failures[copy.decision.topic or "?"] += 1
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            self._too_large(copy)
            return
        copy.failures += 1
        wait = min(PRODUCE_RETRY_MAX_S, PRODUCE_RETRY_INITIAL_S * 2 ** (copy.failures - 1))
        copy.next_try = time.monotonic() + wait
        log.warning(
            "producing the %s copy of %s to %s failed (%s); trying again in %.1fs, "
            "its offset stays uncommitted",
            copy.decision.route.value,
            copy.record,
            copy.decision.topic,
            error.str(),
            wait,
        )

    def _too_large(self, copy: _Copy) -> None:
        """The broker will never take this copy: dead-letter it, or report it and move on."""
        key = record_id(copy.record)
        policy = self._policies.for_consumed_topic(copy.record.topic)
        if copy.decision.route is Route.RETRY and policy is not None and policy.dlq_topic:
            log.error(
                "the retry copy of %s is larger than the broker accepts; dead-lettering it",
                copy.record,
            )
            decision = Decision(Route.DEAD_LETTER, policy.dlq_topic, copy.record.attempt, None)
            copy.decision = decision
            smaller = dataclasses.replace(copy.error, traceback="")  # keep the copy small
            copy.headers = self._headers(copy.record, smaller, decision, copy.retry_info, now_ms())
            self._produce(copy)
            return
        del self._copies[key]
        self._counters.unroutable[copy.record.topic] += 1
        log.error(
            "%s cannot be copied to %s: larger than the broker accepts. It stays at %s[%d]@%d "
            "and is marked done",
            copy.record,
            copy.decision.topic,
            copy.record.topic,
            copy.record.partition,
            copy.record.offset,
        )
        self._done(copy.record, Decision(Route.DROP, None, copy.record.attempt, None), None)

    def poll(self) -> None:
        """Serve delivery reports and produce again the copies whose wait is over."""
        if self._producer is None:
            return
        self._producer.poll(0)
        if self._fatal is not None:
            self._replace_producer(self._fatal)
        now = time.monotonic()
        for copy in list(self._copies.values()):
            if not copy.in_flight and copy.next_try <= now:
                self._produce(copy)

    # ------------------------------------------------------------------ bookkeeping

    def pending(self, partitions: Iterable[TopicPartition] | None = None) -> int:
        """Copies not yet acknowledged (of ``partitions``, or all)."""
        if partitions is None:
            return len(self._copies)
        wanted = set(partitions)
        return sum(1 for (t, p, _o) in self._copies if (t, p) in wanted)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop caring about copies of these partitions (revoked or lost)."""
        wanted = set(partitions)
        for key in [k for k in self._copies if (k[0], k[1]) in wanted]:
            del self._copies[key]

    def close(self, timeout: float = 10.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout)
            self._producer = None
