"""Calls into librdkafka made outside the poll loop, retried while their error is transient.

A freshly started broker, a group coordinator that moves (broker restart, rolling upgrade) or
a leader election make group and metadata calls (``committed``, ``commit``, ``list_topics``,
watermarks, admin requests) fail for a few seconds with NOT_COORDINATOR,
COORDINATOR_LOAD_IN_PROGRESS, LEADER_NOT_AVAILABLE and friends. ``call_with_retry`` is the one
place that retries them: with backoff, bounded by a deadline, and then one clear
:class:`BrokerUnavailableError`. Errors that waiting cannot cure (authorization, an unknown
topic that nobody is creating) fail at once as :class:`KafkaCallError` or
:class:`TopicNotFoundError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

from procpool_kafka.errors import BrokerUnavailableError, KafkaCallError, TopicNotFoundError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: errors that go away by themselves: coordinator or leader moving, broker (re)starting
TRANSIENT_ERRORS = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
    }
)

#: metadata not yet propagated: transient only right after the topic was created
UNKNOWN_TOPIC_ERRORS = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
)

#: the group is rebalancing: a commit may succeed once the rebalance is served
REBALANCE_ERRORS = frozenset({KafkaError.REBALANCE_IN_PROGRESS})

FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0
#: the longest single attempt (a call's own timeout), so that backoff and deadline stay exact
MAX_ATTEMPT_S = 5.0
#: the shortest single attempt: librdkafka needs a moment even when the deadline is near
MIN_ATTEMPT_S = 0.1


def kafka_error(exception: BaseException) -> KafkaError | None:
    """The KafkaError a KafkaException carries, if any."""
    if isinstance(exception, KafkaException) and exception.args:
        error = exception.args[0]
        if isinstance(error, KafkaError):
            return error
    return None


def checked(partitions: list[T] | None) -> list[T]:
    """A ``committed()``/``commit()`` result; its first per-partition error raised instead."""
    for tp in partitions or ():
        error = getattr(tp, "error", None)
        if error is not None:
            raise KafkaException(error)
    return partitions or []


def call_with_retry(
    what: str,
    call: Callable[[float], T],
    deadline: float,
    *,
    retry_unknown_topic: bool = False,
    retry_rebalance: bool = False,
    wait: Callable[[float], None] = time.sleep,
    give_up: Callable[[], BaseException | None] | None = None,
    max_attempt: float = MAX_ATTEMPT_S,
) -> T:
    """``call(attempt_timeout)``, again after transient errors until ``deadline`` (monotonic).

    ``what`` names the call in errors and logs ("committed offsets of group g").
    ``retry_unknown_topic``: the topic was just created, its metadata may lag behind.
    ``retry_rebalance``: REBALANCE_IN_PROGRESS is worth waiting out (``wait`` serves the
    rebalance, e.g. by polling the consumer). ``give_up()`` may return an exception to raise
    instead of retrying (an authentication failure reported through ``error_cb``).
    ``max_attempt`` caps one attempt's timeout (short: ``give_up`` is asked more often).
    """
    backoff = FIRST_BACKOFF_S
    attempts = 0
    while True:
        attempts += 1
        remaining = deadline - time.monotonic()
        try:
            return call(max(MIN_ATTEMPT_S, min(max_attempt, remaining)))
        except KafkaException as exception:
            error = kafka_error(exception)
            if error is None:
                raise KafkaCallError(f"{what} failed: {exception}") from exception
            if not _transient(error, retry_unknown_topic, retry_rebalance):
                raise _permanent(what, error) from exception
            verdict = give_up() if give_up is not None else None
            if verdict is not None:
                raise verdict from exception
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(
                    f"{what}: Kafka did not answer after {attempts} attempt(s): {error.str()}"
                ) from exception
            log.info("%s: %s (transient); trying again in %.1fs", what, error.str(), backoff)
            wait(min(backoff, remaining))
            backoff = min(MAX_BACKOFF_S, backoff * 2)


def is_transient(error: KafkaError) -> bool:
    """An error a retry is likely to cure (see TRANSIENT_ERRORS)."""
    return error.code() in TRANSIENT_ERRORS or bool(error.retriable())


def _transient(error: KafkaError, unknown_topic: bool, rebalance: bool) -> bool:
    code = error.code()
    if error.fatal():
        return False
    if code in UNKNOWN_TOPIC_ERRORS:
        return unknown_topic
    if code in REBALANCE_ERRORS:
        return rebalance
    return is_transient(error)


def _permanent(what: str, error: KafkaError) -> Exception:
    if error.code() in UNKNOWN_TOPIC_ERRORS:
        return TopicNotFoundError(f"{what}: {error.str()}")
    return KafkaCallError(f"{what} failed: {error.str()}")
