"""Start-up checks against the cluster: reachable, the topics exist, routing topics created.

``check_cluster`` runs once in ``ProcPoolConsumer.open()`` before any worker starts, so that
an unreachable broker, a failed authentication or a missing topic is one clear error instead
of a consumer that waits forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from procpool_kafka.broker_health import is_authentication_error
from procpool_kafka.config import ConsumerConfig
from procpool_kafka.errors import BrokerUnavailableError, ConfigError, TopicNotFoundError

log = logging.getLogger(__name__)


def with_librdkafka_logger(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` plus a logger: librdkafka logs go to Python logging, never to stderr."""
    return {**settings, "logger": logging.getLogger("procpool_kafka.librdkafka")}


def check_cluster(config: ConsumerConfig) -> None:
    """Fail early and clearly: broker unreachable, or topics missing; create missing retry
    and dead-letter topics when ``config.create_topics``."""
    settings = with_librdkafka_logger(config.client_settings())
    errors: list[KafkaError] = []
    settings["error_cb"] = errors.append
    try:
        admin = AdminClient(settings)
    except KafkaException as error:
        raise ConfigError(f"invalid Kafka client settings: {error}") from error
    metadata = _cluster_metadata(admin, config, errors)
    topics = metadata.topics.items()
    existing = {name: len(topic.partitions) for name, topic in topics if topic.error is None}
    missing = [topic for topic in config.topics if topic not in existing]
    if missing:
        raise TopicNotFoundError(
            f"topic(s) not found on {config.bootstrap_servers}: {', '.join(missing)}"
        )
    routing = [*config.retry_topics(), *config.dlq_topics()]
    missing = [topic for topic in routing if topic not in existing]
    if missing and not config.create_topics:
        raise TopicNotFoundError(
            f"retry/dead-letter topic(s) not found on {config.bootstrap_servers}: "
            f"{', '.join(missing)} (create them, or set create_topics)"
        )
    if missing:
        _create_routing_topics(admin, config, missing, existing)


def _cluster_metadata(admin: AdminClient, config: ConsumerConfig, errors: list[KafkaError]) -> Any:
    """The cluster's metadata, asked once a second until connect_timeout; an authentication
    failure ends the wait at once (it will not go away)."""
    timeout = config.connect_timeout
    deadline = time.monotonic() + timeout
    while True:
        attempt = max(0.1, min(1.0, deadline - time.monotonic()))
        try:
            return admin.list_topics(timeout=attempt)
        except KafkaException as error:
            admin.poll(0)  # serve error_cb
            auth = [e for e in errors if is_authentication_error(e)]
            if auth or time.monotonic() >= deadline:
                last = auth or errors
                reason = last[-1].str() if last else error.args[0].str()
                waited = "" if auth else f" within {timeout:g}s"
                raise BrokerUnavailableError(
                    f"cannot reach Kafka at {config.bootstrap_servers}{waited}: {reason}"
                ) from error


def _create_routing_topics(
    admin: AdminClient, config: ConsumerConfig, missing: list[str], existing: dict[str, int]
) -> None:
    """Create retry/DLQ topics with the partition count of the base topics they serve."""
    partitions: dict[str, int] = {}
    for base in config.topics:
        policy = config.policy_of(base)
        for topic in (*policy.retry_topics, policy.dlq_topic) if policy else ():
            if topic in missing:
                partitions[topic] = max(partitions.get(topic, 1), existing[base])
    futures = admin.create_topics(
        [NewTopic(topic, count, -1) for topic, count in partitions.items()],
        operation_timeout=config.connect_timeout,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout=config.connect_timeout)
        except KafkaException as error:
            if error.args and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise TopicNotFoundError(f"could not create topic {topic}: {error}") from error
        log.info("created topic %s with %d partitions", topic, partitions[topic])
