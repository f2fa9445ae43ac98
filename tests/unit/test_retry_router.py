"""retry/router.py: FailureRouter without a broker.

What needs no producer runs on the real class: a failure with nowhere to go is done at once,
and invalid producer settings fail at start(). The fatal-producer path runs with a producer
double, because a real broker cannot be made to produce it on demand (OUT_OF_ORDER_SEQUENCE,
InitProducerId refused). Copies produced and acknowledged are tests/integration/test_retry.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from procpool_kafka.errors import ConfigError, ProducerFailedError
from procpool_kafka.metrics import Counters
from procpool_kafka.records import HandlerError, Record
from procpool_kafka.retry.policy import Decision, RetryPolicies, RetryPolicy, Route
from procpool_kafka.retry.router import MAX_PRODUCER_REPLACEMENTS, FailureRouter

Report = Callable[[KafkaError | None, Any], None]
#: librdkafka refuses this property when a client is made: the router must never make one
NO_PRODUCER = {"bootstrap.servers": "unused", "not.a.librdkafka.property": "x"}
ERROR = HandlerError("builtins.ValueError", "bad", "", ("builtins.ValueError",))


def test_a_failure_with_nowhere_to_go_is_done_at_once_without_a_producer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[tuple[Record, Decision, Any]] = []
    counters = Counters()
    no_targets = RetryPolicy(topic="orders", max_attempts=3)  # no retry or dead-letter topic
    router = FailureRouter(
        RetryPolicies([no_targets]),
        "group",
        NO_PRODUCER,
        lambda record, decision, copy: done.append((record, decision, copy)),
        counters,
    )
    router.start()  # no policy copies records: no producer is made
    orders, other = Record("orders", 0, 5, None, b"v"), Record("other", 1, 2, None, b"v", attempt=2)
    router.route(orders, ERROR, None)
    router.route(other, ERROR, None)  # a topic without a policy
    assert done == [
        (orders, Decision(Route.DROP, None, 1, None), None),
        (other, Decision(Route.DROP, None, 2, None), None),
    ]
    assert counters.failed == {"orders": 1, "other": 1}
    assert "no dead-letter topic: marking it done" in caplog.text
    assert router.pending() == 0
    assert router.healthy
    router.poll()
    router.close()


def test_start_refuses_invalid_producer_settings_when_a_policy_copies_records() -> None:
    for policy in (
        RetryPolicy(topic="orders", dlq_topic="orders-dlq"),
        RetryPolicy(topic="orders", retry_topics=("orders-retry",)),
    ):
        router = FailureRouter(
            RetryPolicies([policy]), "group", NO_PRODUCER, lambda *_: None, Counters()
        )
        with pytest.raises(ConfigError, match=r"invalid Kafka producer settings: .*not\.a\."):
            router.start()


class FakeMessage:
    def __init__(self, topic: str, offset: int) -> None:
        self._topic, self._offset = topic, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class ProducerDouble:
    """Acknowledges produces on poll(); once ``fatal``, every produce fails with _FATAL."""

    def __init__(self, settings: dict[str, Any], fatal: bool) -> None:
        self.error_cb: Callable[[KafkaError], None] = settings["error_cb"]
        self.fatal = fatal
        self.queued: list[tuple[str, Report]] = []
        self.purged = False

    def produce(self, topic: str, on_delivery: Report, **_: Any) -> None:
        if self.fatal:
            raise KafkaException(KafkaError(KafkaError._FATAL, "fatal error", fatal=True))
        self.queued.append((topic, on_delivery))

    def poll(self, _timeout: float) -> int:
        queued, self.queued = self.queued, []
        for offset, (topic, report) in enumerate(queued):
            report(None, FakeMessage(topic, offset))
        return len(queued)

    def purge(self) -> None:
        self.purged = True

    def flush(self, _timeout: float) -> int:
        return 0


class Harness:
    def __init__(self, fatal_producers: int) -> None:
        self.producers: list[ProducerDouble] = []
        self.done: list[Record] = []
        self.fatal_producers = fatal_producers
        policy = RetryPolicy(topic="orders", retry_topics=("orders-retry",), max_attempts=3)
        self.router = FailureRouter(
            RetryPolicies([policy]),
            "group",
            {"bootstrap.servers": "unused"},
            self._done,
            Counters(),
            producer_factory=self._make,
        )

    def _make(self, settings: dict[str, Any]) -> Any:
        producer = ProducerDouble(settings, fatal=len(self.producers) < self.fatal_producers)
        self.producers.append(producer)
        return producer

    def _done(self, record: Record, _decision: Decision, _copy: Any) -> None:
        self.done.append(record)

    def fail(self, offset: int) -> Record:
        record = Record("orders", 0, offset, None, b"v")
        error = HandlerError("ValueError", "bad", "", ("ValueError",))
        self.router.route(record, error, None)
        return record


def test_a_fatal_producer_is_replaced_and_its_copies_produced_again() -> None:
    harness = Harness(fatal_producers=1)
    records = [harness.fail(offset) for offset in range(3)]
    assert harness.done == [], "not done while the copy is unacknowledged"
    assert not harness.router.healthy
    harness.router.poll()  # replaces the producer, produces again
    harness.router.poll()  # the new producer acknowledges
    assert harness.producers[0].purged
    assert len(harness.producers) == 2
    assert harness.done == records
    assert harness.router.pending() == 0
    assert harness.router.healthy


def test_a_fatal_error_from_error_cb_replaces_the_producer_and_late_reports_are_fenced() -> None:
    harness = Harness(fatal_producers=0)
    record = harness.fail(0)
    first = harness.producers[0]
    first.error_cb(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence", fatal=True))
    stale = list(first.queued)
    harness.router.poll()  # serves the old queue first, then replaces: see below
    assert harness.done == [record]  # the old producer had acknowledged it before the error
    # a report from the replaced producer that arrives later is ignored
    for topic, report in stale:
        report(None, FakeMessage(topic, 99))
    assert harness.done == [record]


def test_a_producer_that_keeps_failing_ends_the_run_with_a_clear_error() -> None:
    harness = Harness(fatal_producers=MAX_PRODUCER_REPLACEMENTS + 1)
    harness.fail(0)
    with pytest.raises(ProducerFailedError, match="failed fatally 4 times in a row"):
        for _ in range(MAX_PRODUCER_REPLACEMENTS + 1):
            harness.router.poll()
    assert harness.done == [], "the original offset is never marked done"
