"""Runner for retriable-kafka-client 0.7.0 (Python 3.13 venv; it does not import on 3.11).

As its ``consume_topics`` does: a ``concurrent.futures.ProcessPoolExecutor(max_workers)``
(default start method) shared by a ``BaseConsumer(config, executor, max_concurrency)``; here
``max_concurrency`` is BaseConsumer's default (16) unless ``settings`` say otherwise
(``consume_topics`` passes ``max_workers``, which leaves workers idle between submissions).
The executor is wrapped to count successful futures in the consumer process (what "handled"
means for everyone here). Its target receives the JSON-decoded value.

Settings: ``security.protocol=PLAINTEXT`` through ``additional_settings`` (its defaults use
SASL_SSL). Retries: ``ConsumeTopicConfig(retry_topic, retries, fallback_delay)``. Revoke:
``cancel_future_wait_time`` = revoke timeout (it waits that long for each running future of
the revoked partitions, then goes on; the executor cannot kill a worker).
"""

from __future__ import annotations

import functools
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from importlib import metadata
from typing import Any

import confluent_kafka
from retriable_kafka_client import BaseConsumer, ConsumerConfig, ConsumeTopicConfig

from benchmarks.peers.common import Contender, Spec, run_runner
from benchmarks.peers.workload import handle_decoded


class CountingExecutor(ProcessPoolExecutor):
    """A ProcessPoolExecutor that counts the futures that finished without an exception."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers)
        self.succeeded = 0
        self._lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._count)
        return future

    def _count(self, future: Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            with self._lock:
                self.succeeded += 1


class Retriable:
    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._executor = CountingExecutor(spec.workers)
        topic = ConsumeTopicConfig(
            base_topic=spec.topic,
            retry_topic=spec.retry_topic,
            retries=3,
            fallback_delay=spec.retry_delay_s,
        )
        config = ConsumerConfig(
            kafka_hosts=[spec.bootstrap],
            username="",
            password="",
            additional_settings={"security.protocol": "PLAINTEXT", **spec.kafka_config},
            group_id=spec.group,
            target=functools.partial(handle_decoded, spec.job),
            topics=[topic],
            cancel_future_wait_time=spec.revoke_timeout_s,
        )
        self._consumer = BaseConsumer(
            config,
            self._executor,
            max_concurrency=int(spec.settings.get("max_concurrency", 16)),
        )

    def open(self) -> None:
        """BaseConsumer builds its Consumer lazily and subscribes in run()."""

    def run(self) -> None:
        self._consumer.run()

    def stop(self) -> None:
        self._consumer.stop()

    def handled(self) -> int:
        return self._executor.succeeded

    def close(self) -> None:
        # a stuck worker would make shutdown(wait=True) hang forever
        self._executor.shutdown(wait=False, cancel_futures=True)


def build(spec: Spec) -> Contender:
    return Retriable(spec)


def versions() -> dict[str, str]:
    return {
        "retriable_kafka_client": metadata.version("retriable-kafka-client"),
        "confluent_kafka": str(getattr(confluent_kafka, "__version__", "")),
        "librdkafka": str(confluent_kafka.libversion()[0]),
    }


if __name__ == "__main__":
    run_runner(build, versions)
    sys.exit(1)
