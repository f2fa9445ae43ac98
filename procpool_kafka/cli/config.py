"""Resolved option values (see :mod:`procpool_kafka.cli.options`) into the library's
ConsumerConfig, with one RetryPolicy per topic that has a retry or dead-letter topic."""

from __future__ import annotations

from typing import Any

from procpool_kafka.cli.errors import UsageError
from procpool_kafka.cli.options import parse_topic_map
from procpool_kafka.config import ConsumerConfig
from procpool_kafka.retry import Backoff, RetryPolicy


def build_config(
    values: dict[str, Any], where_from: dict[str, str] | None = None
) -> ConsumerConfig:
    """A ConsumerConfig (with retry policies) from resolved option values.

    Every retry option is validated even when no topic has a retry or dead-letter topic.
    """
    where_from = where_from or {}
    missing = [
        f"--{name}"
        for name, key in (
            ("bootstrap-servers", "bootstrap_servers"),
            ("group-id", "group_id"),
            ("topic", "topic"),
        )
        if not values[key]
    ]
    if missing:
        raise UsageError(f"missing required option(s): {', '.join(missing)}")
    retry_topics = parse_topic_map(
        "retry-topic", values["retry_topic"], where_from.get("retry_topic", "flag")
    )
    dlq_source = where_from.get("dlq_topic", "flag")
    dlq_topics: dict[str, str] = {}
    for topic, names in parse_topic_map("dlq-topic", values["dlq_topic"], dlq_source).items():
        if len(names) > 1:
            raise UsageError(
                f"--dlq-topic (from {dlq_source}): one dead-letter topic per topic, "
                f"got {topic}={','.join(names)}"
            )
        dlq_topics[topic] = names[0]
    unknown = sorted((set(retry_topics) | set(dlq_topics)) - set(values["topic"]))
    if unknown:
        raise UsageError(
            f"--retry-topic/--dlq-topic name topics not consumed: {', '.join(unknown)}"
        )
    backoff = Backoff(
        initial_delay=values["initial_delay"],
        multiplier=values["backoff_multiplier"],
        max_delay=values["max_delay"],
        jitter=values["jitter"],
    )
    policies = [
        RetryPolicy(
            topic=topic,
            retry_topics=tuple(retry_topics.get(topic, ())),
            max_attempts=values["max_attempts"],
            backoff=backoff,
            dlq_topic=dlq_topics.get(topic),
            non_retryable=tuple(values["non_retryable"]),
        )
        for topic in values["topic"]
        if topic in retry_topics or topic in dlq_topics
    ]
    if not policies:  # validate --max-attempts and --non-retryable all the same
        RetryPolicy(
            topic="any-topic",
            max_attempts=values["max_attempts"],
            backoff=backoff,
            non_retryable=tuple(values["non_retryable"]),
        )
    optional = {key: values[key] for key in ("workers", "batch_size") if values[key] is not None}
    return ConsumerConfig(
        bootstrap_servers=values["bootstrap_servers"],
        group_id=values["group_id"],
        topics=values["topic"],
        max_in_flight=values["max_in_flight"],
        revoke_timeout=values["revoke_timeout"],
        task_timeout=values["task_timeout"],
        heartbeat_timeout=values["heartbeat_timeout"],
        crash_limit=values["crash_limit"],
        connect_timeout=values["connect_timeout"],
        broker_timeout=values["broker_timeout"],
        kafka_config=values["kafka_config"],
        group_protocol=values["group_protocol"],
        retry=policies,
        create_topics=values["create_topics"],
        **optional,
    )
