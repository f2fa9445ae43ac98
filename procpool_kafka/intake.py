"""Intake: what happens to each consumed message before the pool sees it, and backpressure.

A message becomes a Record in flight (counted against ``max_in_flight``), unless its partition
is not ours, or is paused (pause() does not un-deliver what librdkafka prefetched: the message
is discarded and fetched again on resume, see PauseBook), or in-flight is full. A record of a
retry topic whose not-before time has not come is held in the DelaySchedule with its partition
paused; ``release_due`` hands it to the dispatcher when it is due and resumes the partition.

Backpressure: at ``max_in_flight`` the loop first just stops fetching; only when that lasts
``PAUSE_AFTER_FULL_SECONDS`` are the owned partitions paused (so consume() can be called again
for rebalance callbacks without taking more records); they resume at ``RESUME_FRACTION``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, Message

from procpool_kafka.errors import KafkaCallError
from procpool_kafka.metrics import Counters
from procpool_kafka.pausing import PauseReason
from procpool_kafka.rebalance import PartitionWork
from procpool_kafka.records import TopicPartition, message_headers, now_ms, record_from_message
from procpool_kafka.retry.headers import MalformedRetryHeaders, RetryInfo, read_retry_headers
from procpool_kafka.retry.policy import RetryPolicies

log = logging.getLogger(__name__)

#: at max_in_flight the loop first just stops fetching (librdkafka keeps what it prefetched);
#: only when that lasts this long are the partitions paused, so that consume() can be called
#: again (rebalance callbacks, max.poll.interval.ms) without taking more records. A pause costs
#: librdkafka's prefetched records and about 0.7 s of refetch latency on resume (measured), so
#: light handlers must not pay it on every fill.
PAUSE_AFTER_FULL_SECONDS = 1.0
#: resume backpressure-paused partitions when in-flight falls to this share of max_in_flight
RESUME_FRACTION = 0.75


class Intake:
    """Turns consumed messages into records in flight, holds retries, applies backpressure."""

    def __init__(
        self,
        work: PartitionWork,
        *,
        retry_policies: RetryPolicies,
        counters: Counters,
        max_in_flight: int,
        on_messages: Callable[[], None],
    ) -> None:
        self._owned = work.owned
        self._inflight = work.inflight
        self._tracker = work.tracker
        self._pauses = work.pauses
        self._dispatcher = work.dispatcher
        self._schedule = work.schedule
        self._retry_policies = retry_policies
        self._counters = counters
        self._max_in_flight = max_in_flight
        self._on_messages = on_messages
        self._backpressure = False
        self._full_since: float | None = None

    @property
    def backpressure(self) -> bool:
        """True while the owned partitions are paused because in-flight is full."""
        return self._backpressure

    def capacity(self) -> int:
        """Records that may still be taken before in-flight is full."""
        return self._max_in_flight - len(self._inflight)

    def all_paused(self) -> bool:
        return bool(self._owned) and all(self._pauses.is_paused(tp) for tp in self._owned)

    def accept(self, messages: list[Message]) -> None:
        if messages:
            self._on_messages()
        for message in messages:
            error = message.error()
            if error is not None:
                _on_message_error(error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            tp = TopicPartition(topic, partition)
            if tp not in self._owned:
                continue
            if self._pauses.is_paused(tp) or len(self._inflight) >= self._max_in_flight:
                # pause() does not un-deliver what was already fetched: fetch it again later
                self._pauses.discarded(tp, offset)
                if not self._pauses.is_paused(tp):
                    self._pauses.pause([tp], PauseReason.BACKPRESSURE)
                    self._backpressure = True
                continue
            retry_info = self._retry_info(message, topic)
            attempt = 1 if retry_info is None else retry_info.attempt
            record = record_from_message(message, attempt=attempt)
            self._tracker.received(tp, offset)
            self._inflight.add(record, retry_info)
            self._counters.consumed[topic] += 1
            if retry_info is not None and retry_info.not_before_ms > now_ms():
                # not due: hold it here and pause its partition until it is
                log.debug("holding %r until %d", record, retry_info.not_before_ms)
                self._schedule.hold(tp, record, retry_info.not_before_ms)
                self._pauses.pause([tp], PauseReason.NOT_DUE)
            else:
                self._dispatcher.enqueue(record)

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

    def release_due(self) -> None:
        """Dispatch held retry records whose not-before passed; resume their partitions."""
        if not len(self._schedule):
            return
        due = self._schedule.pop_due(now_ms())
        for record in due:
            log.debug("%r is due", record)
            self._dispatcher.enqueue(record)
        if due:
            self._pauses.release([record.topic_partition for record in due], PauseReason.NOT_DUE)

    def apply_backpressure(self) -> None:
        in_flight = len(self._inflight)
        if in_flight < self._max_in_flight:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = time.monotonic()
        if self._full_since is not None:
            if time.monotonic() - self._full_since >= PAUSE_AFTER_FULL_SECONDS:
                # full for a while: pause (also partitions assigned meanwhile) and poll again
                self._pauses.pause(self._owned, PauseReason.BACKPRESSURE)
                self._backpressure = True
        elif self._backpressure and in_flight <= int(self._max_in_flight * RESUME_FRACTION):
            paused = self._pauses.paused_by(PauseReason.BACKPRESSURE)
            self._pauses.release(paused, PauseReason.BACKPRESSURE)
            self._backpressure = False


def _on_message_error(error: KafkaError) -> None:
    if error.code() == KafkaError._PARTITION_EOF:
        return
    if error.fatal():
        raise KafkaCallError(f"fatal Kafka consumer error: {error.str()}")
    log.warning("consumer error: %s", error.str())
