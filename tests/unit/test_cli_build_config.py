"""Resolved option values into a ConsumerConfig (procpool_kafka.cli.config)."""

from __future__ import annotations

from typing import Any

import pytest

from procpool_kafka.cli.config import build_config
from procpool_kafka.cli.errors import UsageError
from procpool_kafka.cli.options import resolve
from procpool_kafka.config import ConsumerConfig
from procpool_kafka.errors import ConfigError
from procpool_kafka.retry import Backoff


def values(**flags: Any) -> dict[str, Any]:
    """Option values as a run resolves them from ``flags`` alone (with the required ones)."""
    required = {"bootstrap_servers": "127.0.0.1:9092", "group_id": "g", "topic": ["a", "b"]}
    return resolve({**required, **flags}, {}, {})


def test_missing_required_options_are_named_together() -> None:
    with pytest.raises(UsageError) as caught:
        build_config(resolve({"group_id": "g"}, {}, {}))
    assert str(caught.value) == "missing required option(s): --bootstrap-servers, --topic"


def test_a_policy_only_for_topics_with_a_retry_or_dead_letter_topic() -> None:
    config = build_config(
        values(
            retry_topic=["a=a-r1,a-r2"],
            initial_delay="2",
            max_attempts="4",
            non_retryable=["ValueError"],
        )
    )
    assert [policy.topic for policy in config.retry] == ["a"]
    (policy,) = config.retry
    assert policy.retry_topics == ("a-r1", "a-r2")
    assert policy.dlq_topic is None
    assert policy.max_attempts == 4
    assert policy.non_retryable == ("ValueError",)
    assert policy.backoff == Backoff(initial_delay=2.0, multiplier=2.0, max_delay=900.0)


def test_dead_letter_topics_give_each_topic_its_policy() -> None:
    config = build_config(values(dlq_topic=["a=a-dlq,b=b-dlq"]))
    assert {policy.topic: policy.dlq_topic for policy in config.retry} == {
        "a": "a-dlq",
        "b": "b-dlq",
    }


def test_one_dead_letter_topic_per_topic() -> None:
    with pytest.raises(UsageError) as caught:
        build_config(values(dlq_topic=["a=x,y"]), {"dlq_topic": "PROCPOOL_KAFKA_DLQ_TOPIC"})
    assert str(caught.value) == (
        "--dlq-topic (from PROCPOOL_KAFKA_DLQ_TOPIC): one dead-letter topic per topic, got a=x,y"
    )


def test_retry_and_dead_letter_topics_must_name_consumed_topics() -> None:
    with pytest.raises(UsageError) as caught:
        build_config(values(retry_topic=["c=c-r"], dlq_topic=["d=d-dlq"]))
    assert str(caught.value) == "--retry-topic/--dlq-topic name topics not consumed: c, d"


def test_retry_options_are_checked_without_any_retry_topic() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        build_config(values(max_attempts="0"))
    with pytest.raises(ConfigError, match="jitter"):
        build_config(values(jitter="1"))


def test_unset_workers_and_batch_size_keep_the_library_defaults() -> None:
    config = build_config(values())
    default = ConsumerConfig(bootstrap_servers="127.0.0.1:9092", group_id="g", topics=["a", "b"])
    assert (config.workers, config.batch_size) == (default.workers, default.batch_size)
    assert build_config(values(workers="3", batch_size="50")).workers == 3
