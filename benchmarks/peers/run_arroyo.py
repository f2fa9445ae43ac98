"""Runner for sentry-arroyo: StreamProcessor, RunTaskWithMultiprocessing, CommitOffsets.

The documented way to run a CPU-heavy function over a topic with arroyo:
``RunTaskWithMultiprocessing(function, next_step=CommitOffsets(commit), max_batch_size,
max_batch_time, pool=MultiprocessingPool(workers))``; between the two a pass-through step
counts the records that came back from the pool (what "handled" means for everyone here).

Consumer settings: arroyo's ``build_kafka_consumer_configuration`` defaults (librdkafka
auto-commit of the offsets arroyo stores, 50 MB prefetch queue, librdkafka's eager
``range,roundrobin`` assignment: arroyo's KafkaConsumer calls ``assign()``, which the classic
cooperative protocol refuses) plus ``auto.commit.interval.ms=1000`` (the others commit every
second).
``join_timeout`` = revoke timeout: after it, arroyo terminates the whole pool and makes a new
one. It has no retry topics: a handler exception stops the consumer.
"""

from __future__ import annotations

import functools
import sys
from importlib import metadata
from typing import Any

import confluent_kafka
from arroyo.backends.kafka import KafkaConsumer
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, ProcessingStrategy
from arroyo.processing.strategies.abstract import ProcessingStrategyFactory
from arroyo.processing.strategies.run_task_with_multiprocessing import (
    MultiprocessingPool,
    RunTaskWithMultiprocessing,
)
from arroyo.types import Topic

from benchmarks.peers.common import Contender, Spec, run_runner
from benchmarks.peers.workload import handle_arroyo


class Counted(ProcessingStrategy[Any]):  # type: ignore[misc]  # arroyo: not in this venv
    """Forwards every message to ``next_step`` and counts it (the pool's results arrive here)."""

    def __init__(self, next_step: ProcessingStrategy[Any], tally: list[int]) -> None:
        self._next = next_step
        self._tally = tally

    def submit(self, message: Any) -> None:
        self._next.submit(message)
        self._tally[0] += 1

    def poll(self) -> None:
        self._next.poll()

    def close(self) -> None:
        self._next.close()

    def terminate(self) -> None:
        self._next.terminate()

    def join(self, timeout: float | None = None) -> None:
        self._next.join(timeout)


class Factory(ProcessingStrategyFactory[Any]):  # type: ignore[misc]
    def __init__(self, spec: Spec, pool: MultiprocessingPool, tally: list[int]) -> None:
        self._function = functools.partial(handle_arroyo, spec.job)
        self._pool = pool
        self._tally = tally
        self._batch_size = int(spec.settings.get("max_batch_size", 1000))
        self._batch_time = float(spec.settings.get("max_batch_time", 1.0))

    def create_with_partitions(self, commit: Any, partitions: Any) -> ProcessingStrategy[Any]:
        return RunTaskWithMultiprocessing(
            function=self._function,
            next_step=Counted(CommitOffsets(commit), self._tally),
            max_batch_size=self._batch_size,
            max_batch_time=self._batch_time,
            pool=self._pool,
        )

    def shutdown(self) -> None:
        self._pool.close()


class Arroyo:
    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._tally = [0]
        self._processor: StreamProcessor[Any] | None = None
        self._pool: MultiprocessingPool | None = None

    def open(self) -> None:
        spec = self._spec
        self._pool = MultiprocessingPool(num_processes=spec.workers)
        configuration = build_kafka_consumer_configuration(
            {},
            group_id=spec.group,
            auto_offset_reset="earliest",
            bootstrap_servers=[spec.bootstrap],
            override_params={"auto.commit.interval.ms": 1000, **spec.kafka_config},
        )
        self._processor = StreamProcessor(
            KafkaConsumer(configuration),
            Topic(spec.topic),
            Factory(spec, self._pool, self._tally),
            join_timeout=spec.revoke_timeout_s,
        )

    def run(self) -> None:
        assert self._processor is not None
        self._processor.run()

    def stop(self) -> None:
        if self._processor is not None:
            self._processor.signal_shutdown()

    def handled(self) -> int:
        return self._tally[0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def build(spec: Spec) -> Contender:
    return Arroyo(spec)


def versions() -> dict[str, str]:
    return {
        "sentry_arroyo": metadata.version("sentry-arroyo"),
        "confluent_kafka": str(getattr(confluent_kafka, "__version__", "")),
        "librdkafka": str(confluent_kafka.libversion()[0]),
    }


if __name__ == "__main__":
    run_runner(build, versions)
    sys.exit(1)
