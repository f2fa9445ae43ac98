"""procpool-kafka: a Kafka consumer that runs CPU-heavy Python handlers in a process pool."""

from procpool_kafka._version import __version__
from procpool_kafka.records import Record

__all__ = ["Record", "__version__"]
