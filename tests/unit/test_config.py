"""ConsumerConfig validation and handler checks: clear errors before consuming."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from procpool_kafka import ConfigError, ConsumerConfig, HandlerLoadError, ProcPoolConsumer, Record
from procpool_kafka.config import CLASSIC_ONLY_KAFKA_SETTINGS
from procpool_kafka.retry import RetryPolicy

BASE: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:9092", "group_id": "g", "topics": ["t"]}


def config(**overrides: Any) -> ConsumerConfig:
    return ConsumerConfig(**{**BASE, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workers": 0}, "workers must be >= 1"),
        ({"workers": 1.5}, "workers must be a whole number"),
        ({"max_in_flight": 0}, "max_in_flight must be >= 1"),
        ({"revoke_timeout": -1}, "revoke_timeout must be >= 0"),
        ({"task_timeout": 0}, "task_timeout must be > 0"),
        ({"heartbeat_timeout": -5}, "heartbeat_timeout must be > 0"),
        ({"commit_interval": "1"}, "commit_interval must be a number of seconds"),
        ({"crash_limit": 0}, "crash_limit must be >= 1"),
        ({"topics": []}, "topics must name at least one topic"),
        ({"topics": ["a", ""]}, "is not a topic name"),
        ({"topics": ["tiles,thumbnails"]}, "'tiles,thumbnails' is not a valid topic name: ','"),
        ({"topics": ["a b/c"]}, r"' ', '/' not allowed \(Kafka allows 1-249 characters"),
        ({"topics": ["x" * 250]}, "is 250 characters long"),
        ({"topics": [".."]}, "'..' is not a valid topic name"),
        ({"topics": ["a", "a"]}, "duplicate"),
        ({"group_id": ""}, "group_id must be a non-empty string"),
        ({"bootstrap_servers": " "}, "bootstrap_servers must be"),
        ({"kafka_config": {"enable.auto.commit": "true"}}, "cannot be changed"),
        ({"kafka_config": {"enable.auto.offset.store": True}}, "cannot be changed"),
        ({"kafka_config": {"group.id": "other"}}, "conflicts with the group_id"),
        ({"kafka_config": {"x": [1]}}, "value must be"),
    ],
)
def test_invalid_values_name_the_setting(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**overrides)


def test_required_settings_win_and_defaults_are_overridable() -> None:
    settings = config(
        kafka_config={"enable.auto.commit": "false", "auto.offset.reset": "latest"}
    ).librdkafka_settings()
    assert settings["enable.auto.commit"] is False
    assert settings["enable.auto.offset.store"] is False
    assert settings["auto.offset.reset"] == "latest"
    assert settings["partition.assignment.strategy"] == "cooperative-sticky"
    assert settings["heartbeat.interval.ms"] == 1000
    assert settings["queued.max.messages.kbytes"] == 4096
    assert settings["group.id"] == "g"
    quiet = config(kafka_config={"heartbeat.interval.ms": 3000}).librdkafka_settings()
    assert quiet["heartbeat.interval.ms"] == 3000


def test_single_topic_string_and_default_workers() -> None:
    cfg = config(topics="alone")
    assert list(cfg.topics) == ["alone"]
    assert cfg.worker_count >= 1


def test_secrets_are_redacted_in_repr() -> None:
    cfg = config(kafka_config={"sasl.password": "hunter2", "ssl.key.password": "k"})
    assert "hunter2" not in repr(cfg)
    assert "[redacted]" in repr(cfg)


def handle(record: Record) -> None:
    """A valid module-level handler."""


def test_handler_must_be_callable() -> None:
    with pytest.raises(HandlerLoadError, match="not callable"):
        ProcPoolConsumer(config(), "not a function")  # type: ignore[arg-type]


def test_handler_must_be_picklable() -> None:
    lock = threading.Lock()

    def uses_lock(record: Record) -> None:
        with lock:
            pass

    with pytest.raises(HandlerLoadError, match="cannot be pickled"):
        ProcPoolConsumer(config(), uses_lock)


def test_lambda_handler_is_accepted() -> None:
    ProcPoolConsumer(config(), lambda record: None)
    ProcPoolConsumer(config(), handle)


def test_consumer_group_protocol_drops_the_classic_only_defaults() -> None:
    settings = config(group_protocol="consumer").librdkafka_settings()
    assert settings["group.protocol"] == "consumer"
    for key in CLASSIC_ONLY_KAFKA_SETTINGS:
        assert key not in settings
    assert settings["queued.max.messages.kbytes"] == 4096, "the other defaults stay"
    classic = config().librdkafka_settings()
    assert classic["group.protocol"] == "classic"
    assert classic["partition.assignment.strategy"] == "cooperative-sticky"


def test_group_protocol_in_kafka_config_is_adopted() -> None:
    adopted = config(kafka_config={"group.protocol": "Consumer"})
    assert adopted.group_protocol == "consumer"
    assert "heartbeat.interval.ms" not in adopted.librdkafka_settings()
    same = config(group_protocol="consumer", kafka_config={"group.protocol": "consumer"})
    assert same.librdkafka_settings()["group.protocol"] == "consumer"


@pytest.mark.parametrize("key", sorted(CLASSIC_ONLY_KAFKA_SETTINGS))
def test_classic_only_setting_under_the_consumer_protocol_names_it(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"kafka_config\['{key}'\] is not supported") as error:
        config(group_protocol="consumer", kafka_config={key: "1"})
    if key != "group.protocol.type":
        assert "broker-side under the consumer protocol" in str(error.value)
    with pytest.raises(ConfigError, match=key):
        config(kafka_config={"group.protocol": "consumer", key: "1"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"group_protocol": "new"}, "group_protocol must be 'classic' or 'consumer', got 'new'"),
        ({"group_protocol": None}, "group_protocol must be 'classic' or 'consumer', got None"),
        (
            {"kafka_config": {"group.protocol": "eager"}},
            r"kafka_config\['group.protocol'\] must be 'classic' or 'consumer', got 'eager'",
        ),
        (
            {"group_protocol": "consumer", "kafka_config": {"group.protocol": "classic"}},
            "conflicts with group_protocol='consumer'",
        ),
    ],
)
def test_bad_group_protocol_is_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**overrides)


def test_default_workers_honour_loky_max_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    assert config().worker_count == 1


def test_default_workers_follow_the_cpu_affinity() -> None:
    """Under taskset (or a pod's cpuset) the default is the CPUs allowed, not the host's."""
    snippet = (
        "from procpool_kafka import ConsumerConfig; "
        "print(ConsumerConfig('127.0.0.1:9092', 'g', ['t']).worker_count)"
    )
    env = {k: v for k, v in os.environ.items() if k != "LOKY_MAX_CPU_COUNT"}
    result = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "1"


def test_pattern_policy_with_its_own_retry_topics_is_valid() -> None:
    """README's commented alternative: a pattern that also matches its retry topic names."""
    policy = RetryPolicy(
        topic_pattern=r"orders-.*",
        retry_topics=("orders-retry-1m", "orders-retry-10m"),
        dlq_topic="orders-dlq",
    )
    cfg = config(topics=["orders-eu", "orders-us"], retry=[policy])
    assert cfg.retry_topics() == ["orders-retry-1m", "orders-retry-10m"]
    assert cfg.subscribed_topics() == ["orders-eu", "orders-us", *cfg.retry_topics()]
    assert cfg.retry_policies.for_base_topic("orders-retry-1m") is None, (
        "a retry topic is never a base topic"
    )
    with pytest.raises(ConfigError, match="'orders-retry-1m' is a retry or dead-letter topic"):
        config(topics=["orders-eu", "orders-retry-1m"], retry=[policy])


def test_unknown_producer_property_fails_at_open_without_a_retry_policy() -> None:
    """No broker needed: librdkafka refuses the property before connecting."""
    consumer = ProcPoolConsumer(config(producer_config={"bogus.prop": 1}), handle)
    with pytest.raises(ConfigError, match=r"invalid Kafka producer settings: .*bogus\.prop"):
        consumer.open()
    consumer.close()
