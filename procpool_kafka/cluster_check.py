"""Start-up checks against the cluster: reachable, the topics exist, routing topics created.

``check_cluster`` runs once in ``ProcPoolConsumer.open()`` before any worker starts, so that
an unreachable broker, a failed authentication or a missing topic is one clear error instead
of a consumer that waits forever.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from procpool_kafka.broker_calls import call_with_retry, kafka_error
from procpool_kafka.broker_health import is_authentication_error
from procpool_kafka.config import ConsumerConfig
from procpool_kafka.errors import BrokerUnavailableError, ConfigError, TopicNotFoundError
from procpool_kafka.librdkafka_log import with_librdkafka_logger

log = logging.getLogger(__name__)


def check_cluster(config: ConsumerConfig) -> None:
    """Fail early and clearly: invalid producer settings, broker unreachable, or topics
    missing; create missing retry and dead-letter topics when ``config.create_topics``."""
    settings = with_librdkafka_logger(config.client_settings(), "admin")
    errors: list[KafkaError] = []
    settings["error_cb"] = errors.append
    try:
        admin = AdminClient(settings)
    except KafkaException as error:
        problem = _reason(error)
        raise ConfigError(
            f"invalid Kafka client settings: {problem}", setting="kafka_config", problem=problem
        ) from error
    check_producer_settings(config)
    deadline = time.monotonic() + config.connect_timeout
    existing = _topic_partitions(admin, config, errors, deadline)
    missing_base = [topic for topic in config.topics if topic not in existing]
    routing = [*config.retry_topics(), *config.dlq_topics()]
    missing_routing = [topic for topic in routing if topic not in existing]
    if missing_base or (missing_routing and not config.create_topics):
        raise TopicNotFoundError(_missing_topics_message(config, missing_base, missing_routing))
    if missing_routing:
        _create_routing_topics(admin, config, missing_routing, existing, deadline)


def check_producer_settings(config: ConsumerConfig) -> None:
    """ConfigError when librdkafka refuses the producer settings (``producer_config``),
    whether or not a retry policy will ever produce: a producer is made and closed at once."""
    probe = {**config.producer_settings(), "logger": _Discard(), "log.queue": True}
    try:
        producer = Producer(probe)  # its connection attempts are not worth a log line
    except KafkaException as error:
        raise ConfigError(f"invalid Kafka producer settings: {_reason(error)}") from error
    producer.close()


class _Discard:
    """A librdkafka logger that drops every line (the settings probe's)."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        pass


def _reason(error: KafkaException) -> str:
    """librdkafka's own words (``No such configuration property: "x"``)."""
    kafka = kafka_error(error)
    return kafka.str() if kafka is not None else str(error)


def _missing_topics_message(
    config: ConsumerConfig, missing_base: list[str], missing_routing: list[str]
) -> str:
    """One line naming every missing topic (base topics, and routing topics unless created)."""
    parts = []
    if missing_base:
        parts.append(f"topic(s) {', '.join(missing_base)}")
    if missing_routing and not config.create_topics:
        parts.append(f"retry/dead-letter topic(s) {', '.join(missing_routing)}")
    hint = ""
    if missing_routing and not config.create_topics:
        hint = " (create them, or set create_topics)"
    return f"not found on {config.bootstrap_servers}: {'; '.join(parts)}{hint}"


def _topic_partitions(
    admin: AdminClient, config: ConsumerConfig, errors: list[KafkaError], deadline: float
) -> dict[str, int]:
    """Partition counts of the cluster's topics, asked until ``deadline``; an authentication
    failure (reported through error_cb) ends the wait at once: it will not go away."""

    def authentication_failed() -> BaseException | None:
        admin.poll(0)  # serve error_cb
        auth = [e for e in errors if is_authentication_error(e)]
        if not auth:
            return None
        return BrokerUnavailableError(
            f"cannot reach Kafka at {config.bootstrap_servers}: {auth[-1].str()}"
        )

    def unreachable() -> BrokerUnavailableError:
        reason = errors[-1].str() if errors else "no broker answered"
        return BrokerUnavailableError(
            f"cannot reach Kafka at {config.bootstrap_servers} within "
            f"{config.connect_timeout:g}s: {reason}"
        )

    try:
        metadata = call_with_retry(
            "cluster metadata",
            lambda timeout: admin.list_topics(timeout=timeout),
            deadline,
            give_up=authentication_failed,
            max_attempt=1.0,
        )
    except BrokerUnavailableError as error:
        verdict = authentication_failed()
        raise (verdict or unreachable()) from error
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None
    }


def _create_routing_topics(
    admin: AdminClient,
    config: ConsumerConfig,
    missing: list[str],
    existing: dict[str, int],
    deadline: float,
) -> None:
    """Create retry/DLQ topics with the partition count of the base topics they serve, and
    wait until every new partition has a leader (produce and fetch work at once)."""
    partitions: dict[str, int] = {}
    for base in config.topics:
        policy = config.retry_policies.for_base_topic(base)
        for topic in (*policy.retry_topics, policy.dlq_topic) if policy else ():
            if topic in missing:
                partitions[topic] = max(partitions.get(topic, 1), existing[base])
    for topic, count in partitions.items():
        call_with_retry(
            f"creating topic {topic}", partial(_create_topic, admin, topic, count), deadline
        )
        call_with_retry(
            f"leaders of the new topic {topic}",
            partial(_require_leaders, admin, topic, count),
            deadline,
            retry_unknown_topic=True,
        )
        log.info("created topic %s with %d partitions", topic, count)


def _create_topic(admin: AdminClient, topic: str, partitions: int, timeout: float) -> None:
    """Create ``topic``; one that exists already (another member was first) is fine."""
    future = admin.create_topics(
        [NewTopic(topic, partitions, -1)], operation_timeout=timeout, request_timeout=timeout
    )[topic]
    try:
        future.result(timeout=timeout + 1.0)
    except KafkaException as exception:
        error = kafka_error(exception)
        if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return
        raise
    except concurrent.futures.TimeoutError:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "topic creation")) from None


def _require_leaders(admin: AdminClient, topic: str, partitions: int, timeout: float) -> None:
    """Raise LEADER_NOT_AVAILABLE until each of the ``partitions`` of ``topic`` has a leader."""
    metadata = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None:
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic}"))
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    ready = [p for p in metadata.partitions.values() if p.leader >= 0 and p.error is None]
    if len(metadata.partitions) < partitions or len(ready) < partitions:
        raise KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE, f"topic {topic}"))
