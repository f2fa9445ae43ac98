"""UntilEndRun: one ``run(until_end=True)``: its end targets, when it is complete, and the check
of its final commit. The broker calls are here; what "the end" means is end_targets.EndTargets.

    start():       end offsets and the group's start positions of every subscribed
                   partition (retry topics included), retried while a coordinator or
                   leader moves (a fresh broker, a topic created a moment ago)
    complete():    every target reached: by this consumer's done positions, or by the
                   group's commits for partitions another member owns (looked up every 5 s)
    commit_report(): what the group has committed of the targets, read back at the end
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from procpool_kafka.broker_calls import call_with_retry, checked
from procpool_kafka.config import ConsumerConfig
from procpool_kafka.end_targets import EndTargets
from procpool_kafka.metrics import EndCommit
from procpool_kafka.records import TopicPartition

log = logging.getLogger(__name__)

#: seconds between look-ups of the group's commits for batch targets owned by other members
REMOTE_COMMIT_CHECK_INTERVAL = 5.0


class UntilEndRun:
    """The targets of one batch run and how far it got."""

    def __init__(self, consumer: Consumer, config: ConsumerConfig, wait_retries: bool) -> None:
        self._consumer = consumer
        self._config = config
        self.wait_retries = wait_retries  # retry copies made during the run extend it
        self.targets = EndTargets()
        self._last_remote_check = 0.0

    @classmethod
    def start(cls, consumer: Consumer, config: ConsumerConfig, wait_retries: bool) -> UntilEndRun:
        """End offsets now, and the group's start positions, of every subscribed partition."""
        run = cls(consumer, config, wait_retries)
        deadline = time.monotonic() + config.connect_timeout
        partitions: list[KafkaTopicPartition] = []
        for topic in config.subscribed_topics():
            metadata = call_with_retry(
                f"metadata of topic {topic}",
                partial(_topic_metadata, consumer, topic),
                deadline,
                retry_unknown_topic=True,  # a routing topic created a moment ago
            )
            partitions.extend(KafkaTopicPartition(topic, p) for p in sorted(metadata.partitions))
        committed = run.group_committed(partitions, deadline)
        for tp in partitions:
            low, high = call_with_retry(
                f"end offsets of {tp.topic}[{tp.partition}]",
                partial(_watermarks, consumer, tp),
                deadline,
                retry_unknown_topic=True,
            )
            start = committed.get(TopicPartition(tp.topic, tp.partition), -1)
            run.targets.add(TopicPartition(tp.topic, tp.partition), max(start, low), high)
        return run

    def group_committed(
        self, partitions: list[KafkaTopicPartition], deadline: float
    ) -> dict[TopicPartition, int]:
        """The group's committed offsets of ``partitions`` (negative: none), retried until
        ``deadline`` while the group coordinator is loading or moving."""
        consumer = self._consumer
        found = call_with_retry(
            f"committed offsets of group {self._config.group_id!r}",
            lambda timeout: checked(consumer.committed(partitions, timeout=timeout)),
            deadline,
        )
        return {TopicPartition(tp.topic, tp.partition): tp.offset for tp in found}

    def copy_made(self, tp: TopicPartition, offset: int) -> None:
        """A retry copy was written at ``tp``@``offset``: the run waits for it if asked to."""
        if self.wait_retries:
            self.targets.add(tp, offset, offset + 1)

    def complete(
        self, position: Callable[[TopicPartition], int | None], owned: Container[TopicPartition]
    ) -> bool:
        """Every target reached (this consumer's positions; the group's commits elsewhere)."""
        targets = self.targets
        targets.update(position)
        remaining = targets.remaining()
        if not remaining:
            return True
        now = time.monotonic()
        foreign = [tp for tp in remaining if tp not in owned]
        if foreign and now - self._last_remote_check >= REMOTE_COMMIT_CHECK_INTERVAL:
            # partitions another member owns: their commits count too
            self._last_remote_check = now
            try:
                committed = self._consumer.committed(
                    [KafkaTopicPartition(tp.topic, tp.partition) for tp in foreign], timeout=1.0
                )
            except KafkaException as error:
                log.debug("reading the group's commits failed (trying again later): %s", error)
                return False
            for tp in committed:
                if tp.error is None:
                    targets.reach(TopicPartition(tp.topic, tp.partition), tp.offset)
        return targets.complete

    def commit_report(self) -> EndCommit:
        """What the group has committed of the targets, read back from the broker."""
        targets = self.targets
        wanted = [KafkaTopicPartition(tp.topic, tp.partition) for tp in targets.partitions()]
        deadline = time.monotonic() + self._config.connect_timeout
        committed = self.group_committed(wanted, deadline) if wanted else {}
        short = tuple(
            f"{tp.topic}[{tp.partition}] committed {committed.get(tp, -1)}, end {end}"
            for tp, end in targets.items()
            if committed.get(tp, -1) < end
        )
        return EndCommit(partitions=len(wanted), short=short)


def _topic_metadata(consumer: Consumer, topic: str, timeout: float) -> Any:
    """The metadata of ``topic``; its error (e.g. LEADER_NOT_AVAILABLE) raised."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None:
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic}"))
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    return metadata


def _watermarks(consumer: Consumer, tp: KafkaTopicPartition, timeout: float) -> tuple[int, int]:
    low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
    return int(low), int(high)
