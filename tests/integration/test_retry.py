"""Retry topics, delayed redelivery, tiers and the dead-letter topic, against a real broker."""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any

import pytest

from procpool_kafka import ConsumerConfig, ProcPoolConsumer, TopicNotFoundError
from procpool_kafka.retry import (
    H_ATTEMPT,
    H_ATTEMPTS,
    H_CONSUMER_GROUP,
    H_ERROR_MESSAGE,
    H_ERROR_TRACEBACK,
    H_ERROR_TYPE,
    H_NOT_BEFORE,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    Backoff,
    RetryPolicy,
)
from tests.integration.handlers import coordinates, read_store, scripted
from tests.integration.runner import ThreadedConsumer, consumer_config
from tests.kafka_helpers import KafkaTestEnv, wait_for


def make_config(
    kafka: KafkaTestEnv, topic: str, policy: RetryPolicy, **overrides: Any
) -> ConsumerConfig:
    settings: dict[str, Any] = {"retry": [policy], "create_topics": True, **overrides}
    return consumer_config(kafka.bootstrap, [topic], **settings)


def no_jitter(initial: float, max_delay: float = 60.0) -> Backoff:
    return Backoff(initial_delay=initial, multiplier=2.0, max_delay=max_delay, jitter=0.0)


def produce_retry_copy(
    kafka: KafkaTestEnv, topic: str, value: bytes, attempt: int, delay_ms: int
) -> None:
    """A record on a retry topic as our producer writes it: due ``delay_ms`` from now."""
    not_before = str(int(time.time() * 1000) + delay_ms).encode()
    headers = [("procpool.attempt", str(attempt).encode()), ("procpool.not-before", not_before)]
    kafka.produce(topic, [value], headers=headers)


def headers_of(message: Any) -> dict[str, bytes]:
    return dict(message.headers() or [])


def test_transient_failure_succeeds_on_third_attempt_after_backoff(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("orders", partitions=2)
    retry_topic = f"{topic}-retry"
    policy = RetryPolicy(topic=topic, retry_topics=(retry_topic,), backoff=no_jitter(1.0))
    kafka.produce(topic, [b"ok:", b"failuntil:3:", b"ok:"], partition=0)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, topic, policy)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        wait_for(lambda: len(read_store(store)) == 3, timeout=60, message="all succeed")
        wait_for(lambda: kafka.committed(config.group_id, topic)[0] == 3, timeout=10)
        wait_for(lambda: kafka.fully_committed(config.group_id, retry_topic), timeout=10)
        assert running.consumer.paused() == []
        assert len(running.consumer.assignment()) == 4, "base and retry partitions stay assigned"
        summary = running.stop()
    starts = [e for e in read_store(store, "start") if e["value"].startswith("failuntil")]
    assert [e["attempt"] for e in starts] == [1, 2, 3]
    assert starts[1]["time"] - starts[0]["time"] >= 1.0, "first retry waited its backoff"
    assert starts[2]["time"] - starts[1]["time"] >= 2.0, "second retry waited twice as long"
    copies = kafka.consume_all(retry_topic, expected=2)
    assert len(copies) == 2
    for copy in copies:  # the copies may sit in different partitions: match by attempt
        attempt = int(headers_of(copy)[H_ATTEMPT])
        not_before_ms = int(headers_of(copy)[H_NOT_BEFORE])
        assert starts[attempt - 1]["time"] * 1000 >= not_before_ms, "never before not-before"
    assert summary.records_retried == 2
    assert summary.records_ok == 3


def test_exhausted_attempts_land_in_dlq_with_headers_and_original_content(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("payments", partitions=1)
    retry_topic, dlq = f"{topic}-retry", f"{topic}-dlq"
    policy = RetryPolicy(
        topic=topic,
        retry_topics=(retry_topic,),
        max_attempts=3,
        backoff=no_jitter(0.3),
        dlq_topic=dlq,
    )
    original_headers = [("trace-id", b"\xff\x00binary"), ("procpool.attempt", b"99")]
    kafka.produce(topic, [b"fail:always"], key=b"customer-7", headers=original_headers)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, topic, policy)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        dead = kafka.consume_all(dlq, expected=1, timeout=60)
        assert len(dead) == 1
        wait_for(lambda: kafka.committed(config.group_id, topic) == {0: 1}, timeout=10)
        summary = running.stop()
    message = dead[0]
    assert message.key() == b"customer-7"
    assert message.value() == b"fail:always"
    headers = message.headers() or []
    assert ("trace-id", b"\xff\x00binary") in headers, "original headers intact"
    ours = headers_of(message)
    assert ours[H_ATTEMPTS] == b"3"
    assert ours[H_ERROR_TYPE] == b"builtins.ValueError"
    assert b"scripted failure" in ours[H_ERROR_MESSAGE]
    assert b"Traceback" in ours[H_ERROR_TRACEBACK]
    assert ours[H_ORIGINAL_TOPIC] == topic.encode()
    assert ours[H_ORIGINAL_PARTITION] == b"0"
    assert ours[H_ORIGINAL_OFFSET] == b"0"
    assert ours[H_CONSUMER_GROUP] == config.group_id.encode()
    assert H_ATTEMPT not in ours, "a forged/stale attempt header is not carried to the DLQ"
    assert [e["attempt"] for e in read_store(store, "start")] == [1, 2, 3]
    assert summary.records_dead_lettered == 1


def test_non_retryable_exception_goes_straight_to_dlq(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("strict", partitions=1)
    retry_topic, dlq = f"{topic}-retry", f"{topic}-dlq"
    policy = RetryPolicy(
        topic=topic,
        retry_topics=(retry_topic,),
        dlq_topic=dlq,
        backoff=no_jitter(0.2),
        non_retryable=("ValueError",),
    )
    kafka.produce(topic, [b"fail:", b"failuntil:2:"])
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, topic, policy)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        dead = kafka.consume_all(dlq, expected=1, timeout=60)
        wait_for(lambda: len(read_store(store)) == 1, timeout=60, message="the transient one")
        running.stop()
    assert headers_of(dead[0])[H_ATTEMPTS] == b"1"
    assert kafka.end_offsets(retry_topic) == {0: 1}, "only the RuntimeError was retried"


def test_forged_retry_headers_on_a_base_topic_are_ignored(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("forged", partitions=1)
    policy = RetryPolicy(topic=topic, retry_topics=(f"{topic}-retry",))
    far_future = str(int(time.time() * 1000) + 3_600_000).encode()
    kafka.produce(
        topic, [b"ok:"], headers=[("procpool.attempt", b"4"), ("procpool.not-before", far_future)]
    )
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, topic, policy)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        done = wait_for(lambda: read_store(store), timeout=30, message="handled at once")
        assert running.consumer.paused() == []
        running.stop()
    assert done[0]["attempt"] == 1


def test_far_future_not_before_is_clamped_to_max_delay(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("clamp", partitions=1)
    retry_topic = f"{topic}-retry"
    kafka.create_named_topic(retry_topic, 1)
    policy = RetryPolicy(topic=topic, retry_topics=(retry_topic,), backoff=no_jitter(0.5, 2.0))
    produce_retry_copy(kafka, retry_topic, b"ok:", attempt=2, delay_ms=86_400_000)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, topic, policy, create_topics=False)
    started = time.time()
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        done = wait_for(lambda: read_store(store), timeout=30, message="handled after max_delay")
        running.stop()
    assert done[0]["attempt"] == 2
    assert done[0]["time"] - started < 20, "held for max_delay, not a day"


def test_malformed_retry_headers_go_to_the_dlq_when_they_fail(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("malformed", partitions=1)
    retry_topic, dlq = f"{topic}-retry", f"{topic}-dlq"
    policy = RetryPolicy(
        topic=topic, retry_topics=(retry_topic,), dlq_topic=dlq, backoff=no_jitter(0.2)
    )
    kafka.create_named_topic(retry_topic, 1)
    kafka.produce(retry_topic, [b"fail:"], headers=[("procpool.attempt", b"two")])
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, topic, policy)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        dead = kafka.consume_all(dlq, expected=1, timeout=60)
        running.stop()
    assert headers_of(dead[0])[H_ATTEMPTS] == str(policy.max_attempts).encode()


def test_tiers_a_short_retry_is_not_blocked_behind_a_long_one(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("tiers", partitions=1)
    fast, slow = f"{topic}-retry-1s", f"{topic}-retry-60s"
    kafka.create_named_topic(fast, 1)
    kafka.create_named_topic(slow, 1)
    policy = RetryPolicy(topic=topic, retry_topics=(fast, slow), backoff=no_jitter(1.0))
    produce_retry_copy(kafka, slow, b"ok:held", attempt=3, delay_ms=60_000)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, topic, policy, revoke_timeout=2.0)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        wait_for(lambda: (slow, 0) in running.consumer.paused(), timeout=30, message="slow held")
        kafka.produce(topic, [b"failuntil:2:"])
        done = wait_for(lambda: read_store(store), timeout=30, message="fast retry handled")
        assert done[0]["attempt"] == 2 and done[0]["topic"] == fast
        assert (slow, 0) in running.consumer.paused(), "the 60 s record is still held"
        assert running.consumer.paused() == [(slow, 0)], "the fast tier resumed"
        running.stop()
    committed = kafka.committed(config.group_id, slow)
    assert committed[0] < 1, "the held record was dropped without commit at stop"
    assert [e["value"] for e in read_store(store)] == ["failuntil:2:"]


def test_retry_produce_failure_keeps_the_offset_uncommitted(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("lostretry", partitions=1)
    retry_topic = f"{topic}-retry"
    policy = RetryPolicy(topic=topic, retry_topics=(retry_topic,), backoff=no_jitter(0.5))
    store = str(tmp_path / "store.jsonl")
    config = make_config(
        kafka, topic, policy, producer_config={"message.timeout.ms": 2000}, revoke_timeout=2.0
    )
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        wait_for(lambda: len(running.consumer.assignment()) == 2, timeout=30)
        kafka.delete_topic(retry_topic)
        kafka.produce(topic, [b"ok:", b"fail:", b"ok:"])
        wait_for(lambda: len(read_store(store)) == 2, timeout=30, message="neighbours handled")
        wait_for(
            lambda: running.consumer.counters.produce_failures[retry_topic] >= 1,
            timeout=30,
            message="the failed produce is counted",
        )
        for _ in range(5):  # several commit rounds and produce retries: still not past it
            time.sleep(config.commit_interval)
            assert kafka.committed(config.group_id, topic)[0] <= 1
        running.stop()
    assert kafka.committed(config.group_id, topic)[0] == 1


def test_rebalance_while_records_are_held_loses_nothing(
    kafka: KafkaTestEnv, tmp_path: Path, group_protocol: str
) -> None:
    topic = kafka.create_topic("heldmove", partitions=2)
    retry_topic, dlq = f"{topic}-retry", f"{topic}-dlq"
    policy = RetryPolicy(
        topic=topic, retry_topics=(retry_topic,), dlq_topic=dlq, backoff=no_jitter(3.0)
    )
    values = [b"failuntil:2:" if i % 3 == 0 else b"ok:" for i in range(30)]
    kafka.produce(topic, values)
    store = str(tmp_path / "store.jsonl")
    config = make_config(kafka, topic, policy, revoke_timeout=5.0, group_protocol=group_protocol)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as first:
        wait_for(
            lambda: kafka.fully_committed(config.group_id, topic),
            timeout=60,
            message="base topic done (failures copied to the retry topic)",
        )
        wait_for(first.consumer.paused, timeout=30, message="a retry record is held")
        with ThreadedConsumer(config, functools.partial(scripted, store)) as second:
            wait_for(
                lambda: len(coordinates(store)) >= 30,
                timeout=90,
                message="every message handled (first or retried)",
            )
            wait_for(
                lambda: kafka.fully_committed(config.group_id, retry_topic),
                timeout=30,
            )
            assert second.consumer.paused() == []
        wait_for(lambda: first.consumer.paused() == [], timeout=30)
    done = read_store(store)
    base_ok = {(e["partition"], e["offset"]) for e in done if e["topic"] == topic}
    retried = [e for e in done if e["topic"] == retry_topic]
    assert len(base_ok) == 20
    assert len(retried) >= 10 and all(e["attempt"] == 2 for e in retried)
    assert kafka.end_offsets(dlq) == {0: 0, 1: 0}


def test_missing_retry_topic_is_a_clear_error(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    from procpool_kafka import ProcPoolConsumer

    topic = kafka.create_topic("needsretry", partitions=1)
    policy = RetryPolicy(topic=topic, retry_topics=(f"{topic}-retry",), dlq_topic=f"{topic}-dlq")
    config = make_config(kafka, topic, policy, create_topics=False)
    consumer = ProcPoolConsumer(config, functools.partial(scripted, str(tmp_path / "s")))
    with pytest.raises(TopicNotFoundError, match=rf"{topic}-retry, {topic}-dlq"):
        consumer.open()
    consumer.close()


def test_create_topics_uses_the_base_partition_count(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("autocreate", partitions=3)
    retry_topic, dlq = f"{topic}-retry", f"{topic}-dlq"
    policy = RetryPolicy(topic=topic, retry_topics=(retry_topic,), dlq_topic=dlq)
    config = make_config(kafka, topic, policy)
    with ThreadedConsumer(config, functools.partial(scripted, str(tmp_path / "s"))) as running:
        wait_for(lambda: len(running.consumer.assignment()) == 6, timeout=30)
        running.stop()
    kafka.track(retry_topic, dlq)
    assert len(kafka.partitions(retry_topic)) == 3
    assert len(kafka.partitions(dlq)) == 3
    assert coordinates(str(tmp_path / "s")) == set()


def test_pattern_policy_retries_through_its_own_matching_retry_topics(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    """README's `topic_pattern=r"orders-.*"` with retry topics `orders-retry-1m`, ...: the
    pattern matches the retry and dead-letter names too, yet their records are consumed as
    retry copies (attempt >= 2, due time honoured), never as first deliveries."""
    prefix = kafka.create_topic("orders")  # a unique name; its own records stay empty
    eu, us = f"{prefix}-eu", f"{prefix}-us"
    for base in (eu, us):
        kafka.create_named_topic(base, partitions=2)
    tiers = (f"{prefix}-retry-1m", f"{prefix}-retry-10m")
    dlq = f"{prefix}-dlq"
    kafka.track(*tiers, dlq)
    policy = RetryPolicy(
        topic_pattern=re.escape(prefix) + r"-.*",
        retry_topics=tiers,
        max_attempts=3,
        backoff=no_jitter(0.2, max_delay=1.0),
        dlq_topic=dlq,
    )
    kafka.produce(eu, [b"ok:"] * 4 + [b"failuntil:2:"])
    kafka.produce(us, [b"ok:"] * 3 + [b"fail:"])
    store = str(tmp_path / "store.jsonl")
    config = consumer_config(kafka.bootstrap, [eu, us], retry=[policy], create_topics=True)
    assert config.subscribed_topics() == [eu, us, *tiers], "names, never a regex subscription"
    with ProcPoolConsumer(config, functools.partial(scripted, store)) as consumer:
        summary = consumer.run(until_end=True, wait_retries=True)
    starts = read_store(store, "start")
    by_topic: dict[str, list[int]] = {}
    for entry in starts:
        by_topic.setdefault(entry["topic"], []).append(entry["attempt"])
    assert sorted(by_topic[eu]) == [1] * 5 and sorted(by_topic[us]) == [1] * 4
    assert sorted(by_topic[tiers[0]]) == [2, 2], "each failing record once on the first tier"
    assert by_topic[tiers[1]] == [3], "the poison record once on the second tier"
    failing = [e for e in starts if e["value"] != "ok:"]
    assert len(failing) == 5, "2 + 3 attempts: nothing handled twice as a base record"
    assert summary.records_ok == 8 and summary.records_dead_lettered == 1
    assert len(kafka.consume_all(dlq, expected=1)) == 1
    for topic in (eu, us, *tiers):
        assert kafka.fully_committed(config.group_id, topic), topic
