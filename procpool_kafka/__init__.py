"""procpool-kafka: a Kafka consumer that runs CPU-heavy Python handlers in a process pool."""

from procpool_kafka._version import __version__
from procpool_kafka.config import ConsumerConfig
from procpool_kafka.consumer import ProcPoolConsumer
from procpool_kafka.errors import (
    BrokerUnavailableError,
    ConfigError,
    HandlerLoadError,
    ProcPoolKafkaError,
    RecordFailure,
    TaskTimeout,
    TopicNotFoundError,
    WorkerCrashed,
    WorkerLost,
)
from procpool_kafka.metrics import RunSummary
from procpool_kafka.records import Record, TopicPartition

__all__ = [
    "BrokerUnavailableError",
    "ConfigError",
    "ConsumerConfig",
    "HandlerLoadError",
    "ProcPoolConsumer",
    "ProcPoolKafkaError",
    "Record",
    "RecordFailure",
    "RunSummary",
    "TaskTimeout",
    "TopicNotFoundError",
    "TopicPartition",
    "WorkerCrashed",
    "WorkerLost",
    "__version__",
]
