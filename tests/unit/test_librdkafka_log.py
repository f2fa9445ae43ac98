"""librdkafka's log through Python logging: one logger per role, repeats rate-limited."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Producer

from procpool_kafka.librdkafka_log import RateLimitedLog, with_librdkafka_logger

FAIL = (
    "[thrd:127.0.0.1:9/bootstrap]: Connect to ipv4#127.0.0.1:9 failed (after {}ms in state CONNECT)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, str]]:
    return [(r.name, r.levelno, r.getMessage()) for r in caplog.records]


def test_repeats_are_logged_once_per_window_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = RateLimitedLog("admin", window=10.0, clock=clock)
    caplog.set_level(logging.DEBUG, logger="procpool_kafka.librdkafka")
    for delay in range(20):  # messages differing in numbers only count as repeats
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", FAIL.format(delay))
        clock.now += 0.05
    log.log(logging.INFO, "%s [%s] %s", "OTHER", "rdkafka#producer-1", "something else")
    clock.now += 10.0
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", FAIL.format(7))
    assert messages(caplog) == [
        ("procpool_kafka.librdkafka.admin", logging.ERROR, "FAIL: " + FAIL.format(0)),
        ("procpool_kafka.librdkafka.admin", logging.INFO, "OTHER: something else"),
        (
            "procpool_kafka.librdkafka.admin",
            logging.ERROR,
            "FAIL: " + FAIL.format(7) + " (19 repeats in the last 10s not logged)",
        ),
    ]


def test_disabled_levels_are_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog("consumer", clock=Clock())
    caplog.set_level(logging.WARNING, logger="procpool_kafka.librdkafka")
    log.log(logging.DEBUG, "%s [%s] %s", "BROKER", "rdkafka#consumer-1", "debug chatter")
    log.log(logging.WARNING, "%s [%s] %s", "X", "rdkafka#consumer-1", "warned")
    assert messages(caplog) == [
        ("procpool_kafka.librdkafka.consumer", logging.WARNING, "X: warned")
    ]


def test_a_real_client_logs_through_its_role(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="procpool_kafka.librdkafka")
    producer = Producer(with_librdkafka_logger({"bootstrap.servers": ""}, "producer"))
    producer.poll(0.5)
    producer.close()
    names = {record.name for record in caplog.records}
    assert names == {"procpool_kafka.librdkafka.producer"}, caplog.records
    assert all("rdkafka#producer" not in r.getMessage() for r in caplog.records)


def test_log_lines_are_served_on_the_polling_thread_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import threading

    settings = with_librdkafka_logger({"bootstrap.servers": "127.0.0.1:9"}, "producer")
    assert settings["log.queue"] is True, "never called back from librdkafka's own threads"
    caplog.set_level(logging.DEBUG, logger="procpool_kafka.librdkafka")
    producer = Producer({**settings, "reconnect.backoff.ms": 10})
    producer.poll(1.0)
    producer.close()
    assert caplog.records, "the connection failure was logged"
    assert {r.thread for r in caplog.records} == {threading.get_ident()}
