"""Runner for procpool-kafka (this project), in the project's venv.

``ProcPoolConsumer(ConsumerConfig(...), handler)`` with default settings, ``workers`` as
given; the handler is :func:`benchmarks.peers.workload.handle_record` bound with
``functools.partial``. Retries: a :class:`~procpool_kafka.retry.RetryPolicy` with one retry
topic and a fixed delay. Revoke: ``revoke_timeout``, after which the worker running a
revoked partition's record is killed.
"""

from __future__ import annotations

import functools
import sys

import confluent_kafka

import procpool_kafka
from benchmarks.peers.common import Contender, Spec, run_runner
from benchmarks.peers.workload import handle_record
from procpool_kafka import ConsumerConfig, ProcPoolConsumer
from procpool_kafka.retry import Backoff, RetryPolicy


class ProcPool:
    def __init__(self, spec: Spec) -> None:
        retry = []
        if spec.retry_topic:
            retry.append(
                RetryPolicy(
                    topic=spec.topic,
                    retry_topics=(spec.retry_topic,),
                    max_attempts=3,
                    backoff=Backoff(
                        initial_delay=spec.retry_delay_s,
                        multiplier=1.0,
                        max_delay=spec.retry_delay_s,
                        jitter=0.0,
                    ),
                )
            )
        self._config = ConsumerConfig(
            bootstrap_servers=spec.bootstrap,
            group_id=spec.group,
            topics=[spec.topic],
            workers=spec.workers,
            revoke_timeout=spec.revoke_timeout_s,
            retry=retry,
            kafka_config=spec.kafka_config,
            **spec.settings,
        )
        self._consumer = ProcPoolConsumer(self._config, functools.partial(handle_record, spec.job))

    def open(self) -> None:
        self._consumer.open()

    def run(self) -> None:
        self._consumer.run()

    def stop(self) -> None:
        self._consumer.stop()

    def handled(self) -> int:
        for _ in range(10):
            try:  # the run() thread may add a topic to the Counter while we sum it
                return sum(self._consumer.counters.succeeded.values())
            except RuntimeError:
                continue
        return sum(dict(self._consumer.counters.succeeded).values())

    def close(self) -> None:
        self._consumer.close()


def build(spec: Spec) -> Contender:
    return ProcPool(spec)


def versions() -> dict[str, str]:
    return {
        "procpool_kafka": procpool_kafka.__version__,
        "confluent_kafka": str(getattr(confluent_kafka, "__version__", "")),
        "librdkafka": str(confluent_kafka.libversion()[0]),
    }


if __name__ == "__main__":
    run_runner(build, versions)
    sys.exit(1)
