"""Typed configuration of a ProcPoolConsumer, validated on construction with clear errors.

Every invalid value raises :class:`~procpool_kafka.errors.ConfigError` naming the setting.
librdkafka settings pass through ``kafka_config``; the ones procpool-kafka depends on
(explicit commits of explicit offsets) cannot be overridden by accident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loky import cpu_count

from procpool_kafka.errors import ConfigError
from procpool_kafka.retry.policy import RetryPolicies, RetryPolicy
from procpool_kafka.topic_names import require_topic_name

KafkaValue = str | int | float | bool

#: librdkafka settings procpool-kafka must own: offsets are stored and committed explicitly.
REQUIRED_KAFKA_SETTINGS: dict[str, KafkaValue] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}

#: Defaults a user may override through ``kafka_config``.
DEFAULT_KAFKA_SETTINGS: dict[str, KafkaValue] = {
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    # librdkafka's prefetch queue is consumer memory: 4 MiB instead of its 64 MiB default
    # (RSS growth over a 1 KB-message backlog: 29 MB instead of 59 MB at 16 MiB)
    "queued.max.messages.kbytes": 4096,
    # when that queue is full librdkafka waits this long before fetching again; its 1 s
    # default starved a fast consumer (22k records/s instead of 73k, benchmarks/README.md)
    "fetch.queue.backoff.ms": 50,
    # members learn of a rebalance at their next heartbeat, and a cooperative handover takes
    # two rounds (stuck-handler handover measured 8.3 s with librdkafka's 3 s, 7.4 s with 1 s)
    "heartbeat.interval.ms": 1000,
}

#: group protocols: "classic" (the default) and "consumer" (KIP-848, broker-side assignment)
GROUP_PROTOCOLS = ("classic", "consumer")

#: classic-protocol settings librdkafka rejects under group.protocol=consumer, each with what
#: takes its place there
CLASSIC_ONLY_KAFKA_SETTINGS: dict[str, str] = {
    "partition.assignment.strategy": (
        "it is broker-side under the consumer protocol: the broker assigns partitions "
        "(broker setting group.consumer.assignors; a member may pick one with "
        "group.remote.assignor)"
    ),
    "session.timeout.ms": (
        "it is broker-side under the consumer protocol "
        "(broker setting group.consumer.session.timeout.ms)"
    ),
    "heartbeat.interval.ms": (
        "it is broker-side under the consumer protocol "
        "(broker setting group.consumer.heartbeat.interval.ms)"
    ),
    "group.protocol.type": "the consumer protocol has no protocol type; remove it",
}

_SECRET_MARKERS = ("password", "secret", "sasl.jaas", "oauthbearer.config", "key.pem", "token")
REDACTED = "[redacted]"


def is_secret_setting(name: str) -> bool:
    """True for librdkafka settings whose values must never be logged or shown."""
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def redact(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``settings`` with secret values replaced, safe to log."""
    return {k: (REDACTED if is_secret_setting(k) else v) for k, v in settings.items()}


def _as_bool_setting(value: KafkaValue) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    return None


@dataclass(frozen=True)
class ConsumerConfig:
    """What to consume and how to run the handler.

    Durations are in seconds. ``None`` disables an optional limit.
    """

    bootstrap_servers: str
    group_id: str
    topics: Sequence[str]
    #: worker processes; default: the CPUs this process may use (loky's ``cpu_count()``: CPU
    #: affinity, cgroup CPU quota and LOKY_MAX_CPU_COUNT count, unlike ``os.cpu_count()``)
    workers: int | None = None
    #: records queued or running at most; partitions pause when reached
    max_in_flight: int = 5000
    #: one deadline for all running work of revoked partitions (and for a graceful stop)
    revoke_timeout: float = 30.0
    #: hard limit for one handler call; the worker is killed and the record fails (TaskTimeout)
    task_timeout: float | None = None
    #: a worker whose heartbeat stops this long while running a handler is killed (WorkerLost)
    heartbeat_timeout: float | None = 120.0
    #: worker deaths while running the same record before it fails with WorkerCrashed
    crash_limit: int = 3
    #: recycle a worker after this many tasks
    max_tasks_per_worker: int | None = None
    #: recycle a worker whose resident memory exceeds this (MiB), checked between tasks
    max_worker_rss_mb: float | None = None
    #: records per pool task: None adapts it to the handler's cost (about 20 ms of work per task)
    batch_size: int | None = None
    #: upper bound of the adaptive batch size
    max_batch_size: int = 500
    #: seconds between asynchronous commits
    commit_interval: float = 1.0
    #: how long to wait for the cluster to answer at start
    connect_timeout: float = 30.0
    #: run() fails (BrokerUnavailableError) when the cluster is unreachable this long
    broker_timeout: float = 60.0
    #: extra librdkafka settings (passed through; secrets are never logged)
    kafka_config: Mapping[str, KafkaValue] = field(default_factory=dict)
    #: retry and dead-letter routing, per base topic (see procpool_kafka.retry.RetryPolicy)
    retry: Sequence[RetryPolicy] = ()
    #: create missing retry and dead-letter topics (with the base topic's partition count)
    create_topics: bool = False
    #: extra librdkafka settings for the retry/DLQ producer only
    producer_config: Mapping[str, KafkaValue] = field(default_factory=dict)
    #: consumer group protocol: "classic", or "consumer" (KIP-848: the broker assigns
    #: partitions and owns the group timing); ``kafka_config["group.protocol"]`` is the same
    group_protocol: str = "classic"
    #: ``retry`` as one look-up by topic, checked across policies (see ``retry_policies``)
    _retry_policies: RetryPolicies = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.topics, str):
            object.__setattr__(self, "topics", [self.topics])
        object.__setattr__(self, "topics", list(self.topics))
        object.__setattr__(self, "kafka_config", dict(self.kafka_config))
        object.__setattr__(self, "producer_config", dict(self.producer_config))
        if isinstance(self.retry, RetryPolicy):
            object.__setattr__(self, "retry", [self.retry])
        object.__setattr__(self, "retry", list(self.retry))
        if self.workers is None:
            object.__setattr__(self, "workers", default_worker_count())
        object.__setattr__(self, "group_protocol", self._resolve_group_protocol())
        self._validate()

    def _resolve_group_protocol(self) -> str:
        """``group_protocol``, or ``kafka_config["group.protocol"]`` when only that is set."""
        chosen = _group_protocol("group_protocol", self.group_protocol)
        if "group.protocol" not in self.kafka_config:
            return chosen
        given = _group_protocol(
            "kafka_config['group.protocol']", self.kafka_config["group.protocol"]
        )
        if chosen not in ("classic", given):  # an explicit "consumer" against "classic"
            raise ConfigError(
                f"kafka_config['group.protocol']={given!r} conflicts with "
                f"group_protocol={chosen!r}; set one of them"
            )
        return given

    @property
    def worker_count(self) -> int:
        """The resolved number of workers."""
        return int(self.workers or 1)

    def _validate(self) -> None:
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip():
            raise _invalid(
                "bootstrap_servers",
                "must be a non-empty 'host:port[,host:port]' string, "
                f"got {self.bootstrap_servers!r}",
            )
        if not isinstance(self.group_id, str) or not self.group_id.strip():
            raise _invalid("group_id", f"must be a non-empty string, got {self.group_id!r}")
        if not self.topics:
            raise _invalid("topics", "must name at least one topic")
        for topic in self.topics:
            require_topic_name("topics", topic)
        if len(set(self.topics)) != len(self.topics):
            problem = f"duplicate names in {list(self.topics)}"
            raise ConfigError(f"topics: {problem}", setting="topics", problem=problem)
        _require_int("workers", self.workers, minimum=1)
        _require_int("max_in_flight", self.max_in_flight, minimum=1)
        _require_int("crash_limit", self.crash_limit, minimum=1)
        _require_int("max_batch_size", self.max_batch_size, minimum=1)
        if self.batch_size is not None:
            _require_int("batch_size", self.batch_size, minimum=1)
        if self.max_tasks_per_worker is not None:
            _require_int("max_tasks_per_worker", self.max_tasks_per_worker, minimum=1)
        _require_seconds("revoke_timeout", self.revoke_timeout, allow_zero=True)
        _require_seconds("commit_interval", self.commit_interval)
        _require_seconds("connect_timeout", self.connect_timeout)
        _require_seconds("broker_timeout", self.broker_timeout)
        for name in ("task_timeout", "heartbeat_timeout", "max_worker_rss_mb"):
            value = getattr(self, name)
            if value is not None:
                _require_seconds(name, value)
        self._validate_kafka_config()
        self._validate_retry()

    def _validate_retry(self) -> None:
        for policy in self.retry:
            if not isinstance(policy, RetryPolicy):
                raise ConfigError(f"retry: {policy!r} is not a RetryPolicy")
            if not any(policy.matches(topic) for topic in self.topics):
                raise ConfigError(f"{policy.name} matches none of the topics")
        object.__setattr__(self, "_retry_policies", RetryPolicies(self.retry))
        for topic in self.topics:
            if any(topic in p.retry_topics or topic == p.dlq_topic for p in self.retry):
                problem = f"{topic!r} is a retry or dead-letter topic; list base topics only"
                raise ConfigError(f"topics: {problem}", setting="topics", problem=problem)

    @property
    def retry_policies(self) -> RetryPolicies:
        """The ``retry`` policies, looked up by topic."""
        return self._retry_policies

    def retry_topics(self) -> list[str]:
        """Every retry tier of the policies of the configured topics."""
        found: list[str] = []
        for topic in self.topics:
            policy = self.retry_policies.for_base_topic(topic)
            for retry_topic in policy.retry_topics if policy else ():
                if retry_topic not in found:
                    found.append(retry_topic)
        return found

    def dlq_topics(self) -> list[str]:
        found: list[str] = []
        for topic in self.topics:
            policy = self.retry_policies.for_base_topic(topic)
            if policy and policy.dlq_topic and policy.dlq_topic not in found:
                found.append(policy.dlq_topic)
        return found

    def subscribed_topics(self) -> list[str]:
        """Base topics and their retry topics: all consumed side by side."""
        return [*self.topics, *self.retry_topics()]

    def _validate_kafka_config(self) -> None:
        for key, value in self.kafka_config.items():
            if not isinstance(key, str):
                raise ConfigError(f"kafka_config: key {key!r} is not a string")
            if not isinstance(value, str | int | float | bool):
                raise ConfigError(f"kafka_config[{key!r}]: value must be str, int, float or bool")
        for key, required in REQUIRED_KAFKA_SETTINGS.items():
            if key in self.kafka_config and _as_bool_setting(self.kafka_config[key]) != required:
                reason = (
                    "cannot be changed: procpool-kafka commits explicit offsets only after "
                    "records are handled"
                )
                raise ConfigError(
                    f"kafka_config[{key!r}] {reason}",
                    setting="kafka_config",
                    problem=f"{key}={self.kafka_config[key]} {reason}",
                )
        for key, ours in (
            ("bootstrap.servers", self.bootstrap_servers),
            ("group.id", self.group_id),
        ):
            if key in self.kafka_config and str(self.kafka_config[key]) != ours:
                setting = key.replace(".", "_")
                raise ConfigError(
                    f"kafka_config[{key!r}] conflicts with the {setting} setting",
                    setting="kafka_config",
                    problem=f"{key}={self.kafka_config[key]} conflicts with the {setting} setting",
                )
        if self.group_protocol == "consumer":
            for key, reason in CLASSIC_ONLY_KAFKA_SETTINGS.items():
                if key in self.kafka_config:
                    problem = f"{key} is not supported with group_protocol='consumer': {reason}"
                    raise ConfigError(
                        f"kafka_config[{key!r}] is not supported with group_protocol='consumer': "
                        f"{reason}",
                        setting="kafka_config",
                        problem=problem,
                    )

    def librdkafka_settings(self) -> dict[str, KafkaValue]:
        """The full librdkafka configuration of the consumer."""
        settings: dict[str, KafkaValue] = dict(DEFAULT_KAFKA_SETTINGS)
        if self.group_protocol == "consumer":
            for key in CLASSIC_ONLY_KAFKA_SETTINGS:
                settings.pop(key, None)
        settings.update(self.kafka_config)
        settings.update(REQUIRED_KAFKA_SETTINGS)
        settings["bootstrap.servers"] = self.bootstrap_servers
        settings["group.id"] = self.group_id
        settings["group.protocol"] = self.group_protocol
        return settings

    def client_settings(self) -> dict[str, KafkaValue]:
        """Settings shared by the admin client and producers: connection and security only."""
        consumer_only = (
            "group.",
            "auto.",
            "enable.auto",
            "partition.assignment",
            "session.",
            "heartbeat.",
            "max.poll",
            "fetch.",
            "isolation.",
            "queued.",
            "enable.partition.eof",
            "check.crcs",
            "group.instance",
        )
        settings = {
            k: v for k, v in self.librdkafka_settings().items() if not k.startswith(consumer_only)
        }
        return settings

    def producer_settings(self) -> dict[str, KafkaValue]:
        """The retry/dead-letter producer: idempotent, acknowledged by all in-sync replicas."""
        settings = self.client_settings()
        settings.update({"linger.ms": 5})
        settings.update(self.producer_config)
        settings.update({"enable.idempotence": True, "acks": "all"})
        return settings

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={redact(value) if name.endswith('_config') else value!r}"
            for name, value in self.__dict__.items()
        )
        return f"ConsumerConfig({fields})"


def default_worker_count() -> int:
    """The CPUs this process may use: affinity (taskset), cgroup quota, LOKY_MAX_CPU_COUNT."""
    return max(1, int(cpu_count()))


def _group_protocol(name: str, value: object) -> str:
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None or text not in GROUP_PROTOCOLS:
        raise _invalid(name, f"must be 'classic' or 'consumer', got {value!r}")
    return text


def _invalid(name: str, problem: str) -> ConfigError:
    return ConfigError(f"{name} {problem}", setting=name, problem=problem)


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(name, f"must be a whole number, got {value!r}")
    if value < minimum:
        raise _invalid(name, f"must be >= {minimum}, got {value}")


def _require_seconds(name: str, value: object, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(name, f"must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise _invalid(name, f"must be {bound}, got {value:g}")
