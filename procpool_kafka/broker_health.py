"""BrokerHealth: is the cluster reachable, and what are the partitions' end offsets.

Fed from librdkafka's callbacks, which run inside consume() on the loop thread: ``error_cb``
(all brokers down, authentication failures) and ``stats_cb`` (a JSON document every
``statistics.interval.ms`` with each broker's connection state and each partition's high
watermark). Nothing here blocks or talks to the network.
"""

from __future__ import annotations

import json
import logging
import time

from confluent_kafka import KafkaError

from procpool_kafka.records import TopicPartition

log = logging.getLogger(__name__)

#: how often librdkafka reports statistics (unless the user set statistics.interval.ms)
STATS_INTERVAL_MS = 5000

_DOWN_ERRORS = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})
_AUTH_ERRORS = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


def is_authentication_error(error: KafkaError) -> bool:
    """Wrong credentials or missing permissions: waiting longer will not help."""
    return error.code() in _AUTH_ERRORS


class BrokerHealth:
    """Tracks reachability of the cluster and the high watermarks librdkafka reports."""

    def __init__(self) -> None:
        self._down_since: float | None = None
        self._last_error: str | None = None
        self._auth_error: str | None = None
        self._high_watermarks: dict[TopicPartition, int] = {}

    def on_error(self, error: KafkaError) -> None:
        code = error.code()
        if code in _AUTH_ERRORS:
            self._auth_error = error.str()
            self._mark_down(error.str())
        elif code in _DOWN_ERRORS:
            self._mark_down(error.str())
        else:
            log.warning("Kafka client error: %s", error.str())

    def _mark_down(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("Kafka cluster unreachable: %s", reason)
        self._last_error = reason

    def on_stats(self, document: str) -> None:
        """Parse a librdkafka statistics document (broker states, high watermarks)."""
        try:
            stats = json.loads(document)
        except ValueError:
            return
        brokers = stats.get("brokers", {}).values()
        if any(b.get("nodeid", -1) >= 0 and b.get("state") == "UP" for b in brokers):
            self.mark_up()
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, partition_stats in topic_stats.get("partitions", {}).items():
                high = partition_stats.get("hi_offset", -1)
                if int(partition) >= 0 and isinstance(high, int) and high >= 0:
                    self._high_watermarks[TopicPartition(topic, int(partition))] = high

    def mark_up(self) -> None:
        """The cluster answered (a message, a commit, an assignment or an UP broker)."""
        if self._down_since is not None:
            log.info("Kafka cluster reachable again")
        self._down_since = None
        self._auth_error = None

    def down_for(self) -> float:
        """Seconds the cluster has been unreachable (0 while reachable)."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    @property
    def last_error(self) -> str | None:
        return self._auth_error or self._last_error

    def high_watermark(self, tp: TopicPartition) -> int | None:
        return self._high_watermarks.get(tp)
