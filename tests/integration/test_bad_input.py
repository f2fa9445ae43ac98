"""The bad-input matrix, against a real broker.

Each case ends in a clear error or a documented handling (README, "Reliability: bad input");
nothing is lost: offsets are committed past a record only once it was handled or its
dead-letter copy acknowledged (or, for a copy the broker can never take, once it was
reported at ERROR); and the consumer stays up.

Where each row of the matrix is covered (files under tests/integration/ unless named):

==============================================================================
case
    covered by (file::test)
==============================================================================
empty value, null value, null and empty key
    test_bad_input.py::test_empty_null_and_binary_keys_values_and_headers_pass_through
non-UTF-8 key and header values (also in copies)
    test_bad_input.py::test_empty_null_and_binary_keys_values_and_headers_pass_through
    test_retry.py::test_exhausted_attempts_land_in_dlq_with_headers_and_original_content
1 MB values (handled, retried, dead-lettered)
    test_bad_input.py::test_one_megabyte_values_are_handled_retried_and_dead_lettered
value near max.message.bytes: copy too large for the retry/DLQ topic
    test_bad_input.py::test_copies_larger_than_their_topic_accepts_go_to_the_dlq_or_are_reported
value near the producer's message.max.bytes
    test_bad_input.py::test_copy_over_the_producers_message_max_bytes_is_reported_once
malformed and oversized retry headers on a retry topic
    test_bad_input.py::test_malformed_and_oversized_retry_headers_count_as_the_last_attempt
    test_retry.py::test_malformed_retry_headers_go_to_the_dlq_when_they_fail
    test_retry.py::test_far_future_not_before_is_clamped_to_max_delay
    unit/test_retry_headers.py::test_malformed_retry_headers
retry headers on a base topic (ignored)
    test_retry.py::test_forged_retry_headers_on_a_base_topic_are_ignored
    test_bad_input.py::test_malformed_and_oversized_retry_headers_count_as_the_last_attempt
handler returns an unpicklable object (ignored)
    test_bad_input.py::test_misbehaving_handlers_are_contained
handler raises an unpicklable exception
    test_bad_input.py::test_misbehaving_handlers_are_contained
    unit/test_pool.py::test_unpicklable_exception_is_reported_as_strings
handler calls sys.exit
    test_bad_input.py::test_misbehaving_handlers_are_contained
    unit/test_pool.py::test_sys_exit_in_handler_is_a_failure_and_the_worker_survives
handler calls os._exit
    test_bad_input.py::test_misbehaving_handlers_are_contained
    test_consumer.py::test_record_that_always_kills_its_worker_fails_with_worker_crashed
handler segfaults (ctypes.string_at(0))
    test_bad_input.py::test_misbehaving_handlers_are_contained
    unit/test_pool.py::test_worker_death_aborts_its_record_and_a_replacement_starts
handler leaks memory (max_worker_rss_mb recycling)
    test_bad_input.py::test_leaking_handler_is_recycled_by_max_worker_rss_mb
    unit/test_pool.py::test_max_worker_rss_recycles_a_growing_worker
unknown topic (clear error at open)
    test_consumer.py::test_missing_topic_is_a_clear_error
    test_retry.py::test_missing_retry_topic_is_a_clear_error
    test_cli.py::test_missing_topic_exits_2
topic deleted mid-run (consumer up, other topics flow)
    test_bad_input.py::test_topic_deleted_mid_run_other_topics_keep_flowing
invalid librdkafka setting (ConfigError)
    test_consumer.py::test_invalid_librdkafka_setting_is_a_config_error
    test_bad_input.py::test_invalid_settings_are_config_errors_at_open
    test_bad_input.py::test_cli_invalid_librdkafka_setting_exits_2
wrong broker address (BrokerUnavailableError within connect_timeout)
    test_consumer.py::test_unreachable_broker_is_named_within_the_timeout
    test_bad_input.py::test_unresolvable_broker_host_is_named_within_the_timeout
    test_cli.py::test_password_from_env_never_appears (CLI: exit 1)
wrong SASL credentials (clear error within a timeout)
    test_security.py::test_wrong_password_is_a_clear_error_within_the_timeout
    test_security.py::test_cli_wrong_password_exits_1_with_a_clear_error
broker down: librdkafka's log lines rate-limited, named by client role
    test_cli_config.py::test_unreachable_broker_logs_few_lines_named_by_client_role
    unit/test_librdkafka_log.py::test_repeats_are_logged_once_per_window_with_a_count
invalid topic names (a comma, a space, more than 249 characters)
    unit/test_config.py::test_invalid_values_name_the_setting
    unit/test_retry_policy.py::test_policy_validation_names_the_field
    test_cli_config.py::test_bad_values_exit_2_with_one_line_naming_flag_and_value
bad configuration values (README "Reliability: bad configuration", one row each)
    test_cli_config.py::test_bad_values_exit_2_with_one_line_naming_flag_and_value
    test_cli_config.py::test_metrics_port_in_use_and_unresolvable_host_exit_2
    test_cli_config.py::test_misspelled_environment_variable_is_one_warning_line
    unit/test_config.py::test_unknown_producer_property_fails_at_open_without_a_retry_policy
==============================================================================
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer

from procpool_kafka import (
    BrokerUnavailableError,
    ConfigError,
    ConsumerConfig,
    ProcPoolConsumer,
)
from procpool_kafka.records import message_headers
from procpool_kafka.retry import (
    H_ATTEMPTS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_TOPIC,
    HEADER_PREFIX,
    Backoff,
    RetryPolicy,
)
from tests.integration.bad_input_handlers import inspect, read
from tests.integration.handlers import plain
from tests.integration.runner import ThreadedConsumer, consumer_config
from tests.integration.test_cli import HANDLER, cli_env, run_cli
from tests.kafka_helpers import KafkaTestEnv, wait_for

FAST_BACKOFF = Backoff(initial_delay=0.2, multiplier=1.0, max_delay=2.0, jitter=0.0)
MIB = 1024 * 1024

HeaderList = list[tuple[str, bytes | None]]


@dataclass
class Item:
    """One record to produce."""

    value: bytes | None = None
    key: bytes | None = None
    headers: HeaderList = field(default_factory=list)
    partition: int = -1


def produce(
    kafka: KafkaTestEnv, topic: str, items: Sequence[Item], max_bytes: int = 1_000_000
) -> None:
    """Produce ``items`` in order (acks=all) and wait until every one is acknowledged."""
    producer = Producer(
        {"bootstrap.servers": kafka.bootstrap, "acks": "all", "message.max.bytes": max_bytes}
    )
    errors: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(str(error))

    for item in items:
        producer.produce(
            topic,
            value=item.value,
            key=item.key,
            headers=list(item.headers) or None,
            partition=item.partition,
            on_delivery=on_delivery,
        )
    assert producer.flush(60) == 0, "not every record was delivered"
    assert not errors, errors


def make_config(kafka: KafkaTestEnv, topics: list[str], **overrides: Any) -> ConsumerConfig:
    return consumer_config(kafka.bootstrap, topics, **overrides)


def sha(value: bytes | None) -> str | None:
    return None if value is None else hashlib.sha256(value).hexdigest()


def hexed(headers: HeaderList) -> list[list[str]]:
    """Headers as the handler reports them: a null value arrives as b""."""
    return [[name, (value or b"").hex()] for name, value in headers]


def theirs(message: Message) -> HeaderList:
    """A copy's headers without ours."""
    return [(n, v) for n, v in message_headers(message) if not n.startswith(HEADER_PREFIX)]


def ours(message: Message) -> dict[str, bytes]:
    return {n: v for n, v in message_headers(message) if n.startswith(HEADER_PREFIX)}


def committed_to_end(kafka: KafkaTestEnv, group: str, *topics: str) -> bool:
    return all(kafka.fully_committed(group, topic) for topic in topics)


# ---------------------------------------------------------------------- keys, values, headers


def test_empty_null_and_binary_keys_values_and_headers_pass_through(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("odd", partitions=1)
    dlq = kafka.create_topic("odd-dlq", partitions=1)
    binary: HeaderList = [
        ("bin", b"\xff\xfe\x00\x80"),
        ("empty", b""),
        ("null", None),
        ("ключ", "значение".encode()),
        ("dup", b"1"),
        ("dup", b"2"),
    ]
    fail: HeaderList = [("x-do", b"fail")]
    items = [
        Item(key=None, value=b""),  # empty value, null key
        Item(key=b"", value=None),  # empty key, null value (a tombstone)
        Item(key=b"\xff\xfe\x00\x80", value=b"\x00\xff\xc3(", headers=binary),  # not UTF-8
        Item(key=None, value=b"", headers=fail),
        Item(key=b"", value=None, headers=fail),
        Item(key=b"\xff\xfe\x00\x80", value=b"\x00\xff\xc3(", headers=[*binary, *fail]),
    ]
    produce(kafka, topic, items)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], retry=[RetryPolicy(topic=topic, dlq_topic=dlq)])
    with ThreadedConsumer(config, functools.partial(inspect, store)) as running:
        dead = kafka.consume_all(dlq, expected=3, timeout=60)
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 6}, timeout=30)
        summary = running.stop()

    seen = {entry["offset"]: entry for entry in read(store, "start")}
    assert sorted(seen) == list(range(6)), "every record reached the handler once"
    for offset, item in enumerate(items):
        entry = seen[offset]
        assert entry["key"] == (None if item.key is None else item.key.hex())
        assert entry["value_len"] == (None if item.value is None else len(item.value))
        assert entry["value_sha"] == sha(item.value)
        assert entry["headers"] == hexed(item.headers), "bytes as produced, order kept"
    assert sorted(e["offset"] for e in read(store)) == [0, 1, 2]
    assert summary.records_ok == 3 and summary.records_dead_lettered == 3

    assert len(dead) == 3
    for message in dead:
        item = items[int(ours(message)[H_ORIGINAL_OFFSET])]
        assert message.key() == item.key, "null stays null, empty stays empty, bytes intact"
        assert message.value() == item.value
        expected = [(name, value or b"") for name, value in item.headers]
        assert theirs(message) == expected, "the record's own headers, byte for byte"
        assert ours(message)[H_ERROR_TYPE] == b"builtins.ValueError"


# ---------------------------------------------------------------------- sizes


def test_one_megabyte_values_are_handled_retried_and_dead_lettered(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    roomy = {"max.message.bytes": str(3 * MIB)}
    topic = kafka.create_topic("big", partitions=2, config=roomy)
    retry_topic = kafka.create_topic("big-retry", partitions=2, config=roomy)
    dlq = kafka.create_topic("big-dlq", partitions=1, config=roomy)
    policy = RetryPolicy(
        topic=topic,
        retry_topics=(retry_topic,),
        max_attempts=2,
        backoff=FAST_BACKOFF,
        dlq_topic=dlq,
    )
    values = [os.urandom(MIB) for _ in range(6)]
    items = [Item(value=value) for value in values[:4]]
    items.append(Item(value=values[4], headers=[("x-do", b"fail-until:2")]))
    items.append(Item(value=values[5], headers=[("x-do", b"fail")]))
    produce(kafka, topic, items, max_bytes=3 * MIB)
    store = str(tmp_path / "store.jsonl")
    config = make_config(
        kafka, [topic], retry=[policy], producer_config={"message.max.bytes": 3 * MIB}
    )
    with ThreadedConsumer(config, functools.partial(inspect, store)) as running:
        dead = kafka.consume_all(dlq, expected=1, timeout=60)
        wait_for(lambda: len(read(store)) == 5, timeout=60, message="five handled")
        wait_for(
            lambda: committed_to_end(kafka, config.group_id, topic, retry_topic),
            timeout=30,
            message="base and retry topics committed to the end",
        )
        summary = running.stop()
    assert {entry["value_sha"] for entry in read(store)} == {sha(v) for v in values[:5]}
    assert all(entry["value_len"] == MIB for entry in read(store, "start"))
    assert sha(dead[0].value()) == sha(values[5]), "the dead-letter copy carries the 1 MB value"
    assert summary.records_ok == 5
    assert summary.records_retried == 2 and summary.records_dead_lettered == 1


def test_copies_larger_than_their_topic_accepts_go_to_the_dlq_or_are_reported(
    kafka: KafkaTestEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    small = {"max.message.bytes": "1000000"}
    # to_dlq: the retry topic is too small for the copy, the dead-letter topic (broker
    # default, 1048588) takes it. reported: both are too small.
    to_dlq = kafka.create_topic("near-a", partitions=1)
    retry_a = kafka.create_topic("near-a-retry", partitions=1, config=small)
    dlq_a = kafka.create_topic("near-a-dlq", partitions=1)
    reported = kafka.create_topic("near-b", partitions=1)
    retry_b = kafka.create_topic("near-b-retry", partitions=1, config=small)
    dlq_b = kafka.create_topic("near-b-dlq", partitions=1, config=small)
    policies = [
        RetryPolicy(topic=to_dlq, retry_topics=(retry_a,), dlq_topic=dlq_a, backoff=FAST_BACKOFF),
        RetryPolicy(topic=reported, retry_topics=(retry_b,), dlq_topic=dlq_b, backoff=FAST_BACKOFF),
    ]
    near = b"n" * 999_800  # fits its topic; with our headers added it no longer fits 1000000
    for topic in (to_dlq, reported):
        produce(
            kafka,
            topic,
            [Item(value=near, headers=[("x-do", b"fail")]), Item(value=b"ok")],
            max_bytes=2_000_000,
        )
    store = str(tmp_path / "store.jsonl")
    config = make_config(
        kafka,
        [to_dlq, reported],
        retry=policies,
        producer_config={"message.max.bytes": 2_000_000},  # the broker decides, not the client
    )
    caplog.set_level(logging.WARNING, logger="procpool_kafka")
    with ThreadedConsumer(config, functools.partial(inspect, store)) as running:
        dead = kafka.consume_all(dlq_a, expected=1, timeout=60)
        wait_for(
            lambda: committed_to_end(kafka, config.group_id, to_dlq, reported),
            timeout=60,
            message="both committed past the oversized record",
        )
        counters = running.consumer.counters
        produce(kafka, reported, [Item(value=b"after")])
        wait_for(lambda: len(read(store)) == 3, timeout=30, message="the consumer is still up")
        assert counters.unroutable == {reported: 1}
        failures = dict(counters.produce_failures)
        assert failures == {retry_a: 1, retry_b: 1, dlq_b: 1}, "each copy tried once, no loop"
        summary = running.stop()
    assert len(dead) == 1 and len(dead[0].value() or b"") == len(near)
    assert ours(dead[0])[H_ORIGINAL_TOPIC] == to_dlq.encode()
    assert ours(dead[0])[H_ATTEMPTS] == b"1"
    assert kafka.end_offsets(retry_a) == kafka.end_offsets(retry_b) == {0: 0}
    assert kafka.end_offsets(dlq_b) == {0: 0}
    assert "larger than the broker accepts; dead-lettering it" in caplog.text
    assert f"It stays at {reported}[0]@0 and is marked done" in caplog.text
    assert summary.records_dead_lettered == 1 and summary.records_ok == 3


def test_copy_over_the_producers_message_max_bytes_is_reported_once(
    kafka: KafkaTestEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = kafka.create_topic("nearclient", partitions=1)
    retry_topic = kafka.create_topic("nearclient-retry", partitions=1)
    dlq = kafka.create_topic("nearclient-dlq", partitions=1)
    policy = RetryPolicy(
        topic=topic, retry_topics=(retry_topic,), dlq_topic=dlq, backoff=FAST_BACKOFF
    )
    near = b"n" * 999_900  # under the producer's default message.max.bytes; copies are not
    produce(kafka, topic, [Item(value=near, headers=[("x-do", b"fail")]), Item(value=b"ok")])
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], retry=[policy])
    caplog.set_level(logging.ERROR, logger="procpool_kafka")
    with ThreadedConsumer(config, functools.partial(inspect, store)) as running:
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 2}, timeout=60)
        counters = running.consumer.counters
        assert counters.unroutable == {topic: 1}
        assert dict(counters.produce_failures) == {retry_topic: 1, dlq: 1}
        running.stop()
    assert kafka.end_offsets(retry_topic) == kafka.end_offsets(dlq) == {0: 0}
    assert caplog.text.count("larger than the broker accepts") == 2  # retry, then DLQ copy


# ---------------------------------------------------------------------- retry headers


def test_malformed_and_oversized_retry_headers_count_as_the_last_attempt(
    kafka: KafkaTestEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = kafka.create_topic("hdr", partitions=1)
    retry_topic = kafka.create_topic("hdr-retry", partitions=1)
    dlq = kafka.create_topic("hdr-dlq", partitions=1)
    policy = RetryPolicy(
        topic=topic,
        retry_topics=(retry_topic,),
        max_attempts=3,
        backoff=FAST_BACKOFF,
        dlq_topic=dlq,
    )
    now = str(int(time.time() * 1000)).encode()
    fail = ("x-do", b"fail")
    malformed: list[HeaderList] = [
        [("procpool.attempt", b"9" * 40), ("procpool.not-before", now)],  # 40 digits
        [("procpool.attempt", b"2"), ("procpool.not-before", b"7" * 100_000)],  # 100 kB
        [],  # none of ours at all
        [("procpool.attempt", b"\xff\xfe"), ("procpool.not-before", now)],  # not ASCII
        [("procpool.attempt", b"0"), ("procpool.not-before", now)],  # attempts start at 1
        [("procpool.attempt", None), ("procpool.not-before", now)],  # null value
    ]
    noisy: HeaderList = [  # valid attempt and not-before, junk in the informational ones
        ("procpool.attempt", b"2"),
        ("procpool.not-before", now),
        ("procpool.error-message", b"e" * 200_000),
        ("procpool.original-topic", b"\xff\xfe"),
        ("procpool.original-offset", b"-5"),
        fail,
    ]
    items = [Item(value=b"ok", headers=malformed[0])]
    items += [Item(value=b"bad", headers=[*headers, fail]) for headers in malformed]
    items.append(Item(value=b"noisy", headers=noisy))
    produce(kafka, retry_topic, items)
    base_forged: HeaderList = [("procpool.attempt", b"junk"), ("procpool.not-before", b"9" * 40)]
    produce(kafka, topic, [Item(value=b"base", headers=base_forged)])
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], retry=[policy])
    caplog.set_level(logging.WARNING, logger="procpool_kafka")
    with ThreadedConsumer(config, functools.partial(inspect, store)) as running:
        dead = kafka.consume_all(dlq, expected=7, timeout=60)
        wait_for(
            lambda: committed_to_end(kafka, config.group_id, topic, retry_topic),
            timeout=30,
            message="base and retry topics committed to the end",
        )
        running.stop()
    done = {(e["topic"], e["offset"]): e["attempt"] for e in read(store)}
    assert done == {(retry_topic, 0): 3, (topic, 0): 1}, "malformed: last attempt; base: ignored"
    assert len(dead) == 7
    for message in dead:
        headers = ours(message)
        assert headers[H_ATTEMPTS] == b"3"
        assert len(headers[H_ERROR_MESSAGE]) <= policy.max_error_message_bytes
        assert sum(len(v) for _n, v in message_headers(message)) < 20_000, (
            "oversized headers of ours are replaced, not carried"
        )
    noisy_dead = [m for m in dead if m.value() == b"noisy"]
    assert len(noisy_dead) == 1, "the valid-but-noisy record was retried once, then dead-lettered"
    warnings = [r for r in caplog.records if "malformed retry headers" in r.getMessage()]
    assert len(warnings) == 7
    assert all(retry_topic in r.getMessage() for r in warnings), "never for the base topic"
    assert all(len(r.getMessage()) < 1000 for r in warnings), "the warning stays short"


# ---------------------------------------------------------------------- handlers


def test_misbehaving_handlers_are_contained(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("misbehave", partitions=1)
    dlq = kafka.create_topic("misbehave-dlq", partitions=1)
    commands = [
        b"",
        b"return-unpicklable",
        b"raise-unpicklable",
        b"sys-exit",
        b"os-exit",
        b"segv",
        b"",
    ]
    produce(kafka, topic, [Item(value=b"v", headers=[("x-do", c)]) for c in commands])
    store = str(tmp_path / "store.jsonl")
    config = make_config(
        kafka, [topic], retry=[RetryPolicy(topic=topic, dlq_topic=dlq)], crash_limit=2
    )
    with ThreadedConsumer(config, functools.partial(inspect, store)) as running:
        dead = kafka.consume_all(dlq, expected=4, timeout=90)
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 7}, timeout=30)
        produce(kafka, topic, [Item(value=b"after")])
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 8}, timeout=30)
        assert running.consumer.counters.worker_crashes == 4, "os._exit and segv, twice each"
        wait_for(lambda: len(running.consumer.worker_pids()) == 2, timeout=30)
        summary = running.stop()
    assert sorted(e["offset"] for e in read(store)) == [0, 1, 6, 7], "unpicklable return: ok"
    by_offset = {int(ours(m)[H_ORIGINAL_OFFSET]): ours(m) for m in dead}
    assert sorted(by_offset) == [2, 3, 4, 5]
    assert by_offset[2][H_ERROR_TYPE] == b"tests.integration.bad_input_handlers.UnpicklableError"
    assert by_offset[2][H_ERROR_MESSAGE] == b"holds a lock"
    assert by_offset[3][H_ERROR_TYPE] == b"builtins.SystemExit"
    assert by_offset[4][H_ERROR_TYPE] == b"procpool_kafka.errors.WorkerCrashed"
    assert b"exit code 7" in by_offset[4][H_ERROR_MESSAGE]
    assert by_offset[5][H_ERROR_TYPE] == b"procpool_kafka.errors.WorkerCrashed"
    assert b"SIGSEGV" in by_offset[5][H_ERROR_MESSAGE]
    assert summary.records_ok == 4 and summary.records_dead_lettered == 4


def test_leaking_handler_is_recycled_by_max_worker_rss_mb(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("leak", partitions=1)
    produce(kafka, topic, [Item(value=b"v", headers=[("x-do", b"leak:60")]) for _ in range(6)])
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [topic], workers=1, batch_size=1, max_worker_rss_mb=150)
    with ThreadedConsumer(config, functools.partial(inspect, store)) as running:
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 6}, timeout=60)
        running.stop()
        snapshot = running.consumer.snapshot()
    assert snapshot is not None
    assert snapshot.worker_restarts["recycled"] >= 1
    assert snapshot.worker_restarts["crashed"] == 0
    done = read(store)
    assert sorted(e["offset"] for e in done) == list(range(6)), "nothing lost to recycling"
    assert len({e["pid"] for e in done}) >= 2, "a fresh worker took over"


# ---------------------------------------------------------------------- topics


def test_topic_deleted_mid_run_other_topics_keep_flowing(
    kafka: KafkaTestEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    doomed = kafka.create_topic("doomed", partitions=2)
    kept = kafka.create_topic("kept", partitions=2)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, [doomed, kept])
    caplog.set_level(logging.WARNING, logger="procpool_kafka")
    with ThreadedConsumer(config, functools.partial(inspect, store)) as running:
        produce(kafka, doomed, [Item(value=b"d")] * 10)
        produce(kafka, kept, [Item(value=b"k")] * 10)
        wait_for(lambda: len(read(store)) == 20, timeout=60, message="both topics flow")
        kafka.delete_topic(doomed)
        for _ in range(3):
            produce(kafka, kept, [Item(value=b"k")] * 10)
        wait_for(lambda: len(read(store)) == 50, timeout=60, message="the kept topic flows")
        wait_for(
            lambda: committed_to_end(kafka, config.group_id, kept),
            timeout=30,
            message="the kept topic's commits keep landing",
        )
        assert running.error is None
        summary = running.stop()
    assert summary.records_ok == 50
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"kafka_config": {"session.timeout.ms": "soon"}}, "session.timeout.ms"),
        ({"kafka_config": {"security.protocol": "carrier-pigeon"}}, "security.protocol"),
        ({"producer_config": {"no.such.producer.setting": "1"}}, "no.such.producer.setting"),
        ({"producer_config": {"batch.num.messages": "many"}}, "batch.num.messages"),
    ],
    ids=["consumer-value", "client-value", "producer-key", "producer-value"],
)
def test_invalid_settings_are_config_errors_at_open(
    kafka: KafkaTestEnv, tmp_path: Path, overrides: dict[str, Any], named: str
) -> None:
    topic = kafka.create_topic("badcfg")
    dlq = kafka.create_topic("badcfg-dlq")
    config = make_config(
        kafka, [topic], workers=1, retry=[RetryPolicy(topic=topic, dlq_topic=dlq)], **overrides
    )
    consumer = ProcPoolConsumer(config, functools.partial(plain, str(tmp_path / "s")))
    try:
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            consumer.open()
        assert consumer.worker_pids() == [], "no worker left running"
    finally:
        consumer.close()


def test_cli_invalid_librdkafka_setting_exits_2(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("cli-badcfg")
    args = ["run", HANDLER, "-b", kafka.bootstrap, "-G", "g", "-t", topic, "--workers", "1"]
    result = run_cli([*args, "-X", "fetch.wait.max.ms=whenever"], cli_env(tmp_path / "s"))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("procpool-kafka: error: ") and "fetch.wait.max.ms" in last


def test_unresolvable_broker_host_is_named_within_the_timeout(tmp_path: Path) -> None:
    address = "no-such-host.invalid:9092"
    config = ConsumerConfig(
        bootstrap_servers=address, group_id="g", topics=["t"], connect_timeout=3
    )
    consumer = ProcPoolConsumer(config, functools.partial(plain, str(tmp_path / "s")))
    started = time.monotonic()
    try:
        with pytest.raises(BrokerUnavailableError, match=r"no-such-host\.invalid:9092"):
            consumer.open()
        assert time.monotonic() - started < 3 + 10
    finally:
        consumer.close()
