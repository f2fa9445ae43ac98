"""Helpers for integration tests: unique names, topics, producing, reading offsets."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

T = TypeVar("T")


def unique_name(prefix: str) -> str:
    """A topic or group name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(
    condition: Callable[[], T], timeout: float, interval: float = 0.05, message: str = ""
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message}")
        time.sleep(interval)


class KafkaTestEnv:
    """Creates uniquely named topics on a real broker and tidies them up."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self._created: list[str] = []

    def create_topic(
        self, prefix: str = "t", partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> str:
        name = unique_name(prefix)
        self.create_named_topic(name, partitions, config)
        return name

    def create_named_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> None:
        """Create ``name``; ``config`` sets topic configs (e.g. max.message.bytes)."""
        new_topic = NewTopic(name, partitions, 1, config=dict(config or {}))
        futures = self.admin.create_topics([new_topic], operation_timeout=30)
        futures[name].result(timeout=30)
        self._created.append(name)
        wait_for(
            lambda: self._leaders_known(name, partitions),
            timeout=30,
            message=f"leaders of {name}",
        )

    def _leaders_known(self, topic: str, partitions: int) -> bool:
        metadata = self.admin.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return False
        return len(metadata.partitions) == partitions and all(
            p.leader >= 0 for p in metadata.partitions.values()
        )

    def track(self, *names: str) -> None:
        """Delete these topics (created by the code under test) at the end of the test."""
        self._created.extend(names)

    def delete_topic(self, name: str) -> None:
        futures = self.admin.delete_topics([name], operation_timeout=30)
        futures[name].result(timeout=30)
        if name in self._created:
            self._created.remove(name)

    def producer(self) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "acks": "all"})

    def produce(
        self,
        topic: str,
        values: Iterable[bytes],
        partition: int | None = None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> int:
        """Produce values and wait until the broker acknowledged every one; returns the count."""
        producer = self.producer()
        errors: list[str] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(str(error))

        count = 0
        for value in values:
            while True:
                try:
                    producer.produce(
                        topic,
                        value=value,
                        key=key,
                        partition=-1 if partition is None else partition,
                        headers=list(headers) if headers is not None else None,
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
        remaining = producer.flush(60)
        assert remaining == 0, f"{remaining} messages not delivered"
        assert not errors, errors
        return count

    def produce_to_partitions(self, topic: str, partitions: int, per_partition: int) -> int:
        """Produce ``per_partition`` numbered values to each partition."""
        total = 0
        for partition in range(partitions):
            values = (f"{partition}:{i}".encode() for i in range(per_partition))
            total += self.produce(topic, values, partition=partition)
        return total

    def partitions(self, topic: str) -> list[int]:
        metadata = self.admin.list_topics(topic, timeout=10).topics[topic]
        return sorted(metadata.partitions)

    def end_offsets(self, topic: str) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": unique_name("probe")})
        try:
            result = {}
            for partition in self.partitions(topic):
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                result[partition] = high
            return result
        finally:
            consumer.close()

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Committed offsets of ``group`` per partition of ``topic`` (-1001 when none)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            wanted = [TopicPartition(topic, p) for p in self.partitions(topic)]
            return {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=10)}
        finally:
            consumer.close()

    def fully_committed(self, group: str, topic: str) -> bool:
        """Every non-empty partition of ``topic`` has ``group``'s commit at its end offset."""
        committed = self.committed(group, topic)
        return all(committed[p] == end for p, end in self.end_offsets(topic).items() if end > 0)

    def group_protocol(self, group: str) -> str:
        """The protocol the broker runs ``group`` with: "classic" or "consumer" (KIP-848)."""
        description = self.admin.describe_consumer_groups([group])[group].result(timeout=10)
        return str(description.type.name).lower()

    def consume_all(self, topic: str, expected: int, timeout: float = 30.0) -> list[Message]:
        """Read ``expected`` messages of ``topic`` from the beginning (no group commits)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": unique_name("reader"),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        messages: list[Message] = []
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + timeout
            while len(messages) < expected and time.monotonic() < deadline:
                for message in consumer.consume(500, timeout=0.5):
                    if message.error() is None:
                        messages.append(message)
            return messages
        finally:
            consumer.close()

    def cleanup(self) -> None:
        if not self._created:
            return
        with contextlib.suppress(KafkaException):
            self.admin.delete_topics(list(self._created), operation_timeout=30)
        self._created.clear()
