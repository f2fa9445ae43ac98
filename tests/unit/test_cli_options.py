"""Option resolution of the CLI: flag > env > file > default, and value conversion."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from procpool_kafka.cli.config import build_config
from procpool_kafka.cli.options import (
    FLAG_OF_SETTING,
    OPTIONS,
    add_arguments,
    describe_config_error,
    load_file,
    parse_topic_map,
    resolve,
    sources,
    split_topic_map,
    unknown_variables,
)
from procpool_kafka.config import ConsumerConfig
from procpool_kafka.errors import ConfigError
from procpool_kafka.retry import Backoff, RetryPolicy

BASE: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:9092", "group_id": "g", "topics": ["t"]}


def test_precedence_flag_env_file_default() -> None:
    file_values = {"group_id": "from-file", "workers": 3, "max_in_flight": 10}
    environ = {"PROCPOOL_KAFKA_GROUP_ID": "from-env", "PROCPOOL_KAFKA_WORKERS": "5"}
    flags = {"group_id": "from-flag"}
    values = resolve(flags, environ, file_values)
    assert values["group_id"] == "from-flag"
    assert values["workers"] == 5
    assert values["max_in_flight"] == 10
    assert values["revoke_timeout"] == 30.0


def test_lists_and_booleans_from_each_source() -> None:
    values = resolve(
        {"topic": ["a", "b"]},
        {"PROCPOOL_KAFKA_UNTIL_END": "yes", "PROCPOOL_KAFKA_DLQ_TOPIC": "a=a-dlq, b=b-dlq"},
        {"retry_topic": ["a=a-r1,a-r2"], "create_topics": True},
    )
    assert values["topic"] == ["a", "b"]
    assert values["until_end"] is True
    assert values["dlq_topic"] == ["a=a-dlq", "b=b-dlq"]
    assert values["create_topics"] is True
    assert parse_topic_map("retry-topic", values["retry_topic"]) == {"a": ["a-r1", "a-r2"]}


def test_kafka_config_merges_key_by_key() -> None:
    values = resolve(
        {"kafka_config": ["fetch.min.bytes=3"]},
        {"PROCPOOL_KAFKA_KAFKA_CONFIG": "sasl.password=p;fetch.min.bytes=2\nclient.id=env"},
        {"kafka_config": {"client.id": "file", "linger.ms": 5, "enable.x": True}},
    )
    assert values["kafka_config"] == {
        "client.id": "env",
        "linger.ms": "5",
        "enable.x": "true",
        "sasl.password": "p",
        "fetch.min.bytes": "3",
    }


def test_optional_float_can_be_switched_off() -> None:
    assert resolve({}, {"PROCPOOL_KAFKA_HEARTBEAT_TIMEOUT": "off"}, {})["heartbeat_timeout"] is None
    assert resolve({"task_timeout": "2.5"}, {}, {})["task_timeout"] == 2.5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"workers": "x"}, "--workers (from flag): expected a whole number, got 'x'"),
        ({"until_end": "maybe"}, "--until-end (from flag): expected true or false, got 'maybe'"),
        ({"kafka_config": ["novalue"]}, "expected KEY=VALUE"),
        ({"progress_interval": "0"}, "--progress-interval (from flag): must be > 0, got 0"),
        ({"progress_interval": "-5"}, "--progress-interval (from flag): must be > 0, got -5"),
        ({"metrics_port": "99999"}, "--metrics-port (from flag): must be a port in 0..65535"),
        ({"task_timeout": "soon"}, "--task-timeout (from flag): expected a number or off"),
    ],
)
def test_bad_values_name_the_option(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(flags, {}, {})


def test_bad_values_from_env_and_file_name_their_source() -> None:
    with pytest.raises(ConfigError, match=re.escape("--workers (from PROCPOOL_KAFKA_WORKERS)")):
        resolve({}, {"PROCPOOL_KAFKA_WORKERS": "two"}, {})
    with pytest.raises(ConfigError, match=re.escape("--workers (from config file): expected")):
        resolve({}, {}, {"workers": 2.5})


SAME_SYNTAX = "tiles=tiles-retry-1m,tiles-retry-10m"


def test_topic_map_syntax_is_the_same_in_every_source() -> None:
    expected = {"tiles": ["tiles-retry-1m", "tiles-retry-10m"]}
    for values in (
        resolve({"retry_topic": [SAME_SYNTAX]}, {}, {}),
        resolve({}, {"PROCPOOL_KAFKA_RETRY_TOPIC": SAME_SYNTAX}, {}),
        resolve({}, {}, {"retry_topic": SAME_SYNTAX}),
        resolve({}, {}, {"retry_topic": [SAME_SYNTAX]}),
    ):
        assert parse_topic_map("retry-topic", values["retry_topic"]) == expected


def test_topic_map_lists_several_topics() -> None:
    for text in ("a=a-r1,a-r2,b=b-r1", "a=a-r1,a-r2;b=b-r1", "a=a-r1,a-r2\nb=b-r1"):
        items = resolve({}, {"PROCPOOL_KAFKA_RETRY_TOPIC": text}, {})["retry_topic"]
        assert parse_topic_map("retry-topic", items) == {"a": ["a-r1", "a-r2"], "b": ["b-r1"]}
    assert split_topic_map("x,a=b") == ["x", "a=b"], "a leading bare name stays an error"


def test_topic_lists_split_on_commas_in_every_source() -> None:
    expected = ["tiles", "thumbnails", "more"]
    assert resolve({"topic": ["tiles,thumbnails", "more"]}, {}, {})["topic"] == expected
    env = {"PROCPOOL_KAFKA_TOPIC": "tiles, thumbnails,more"}
    assert resolve({}, env, {})["topic"] == expected
    assert resolve({}, {}, {"topic": "tiles,thumbnails,more"})["topic"] == expected
    assert resolve({}, {}, {"topic": ["tiles", "thumbnails,more"]})["topic"] == expected
    non_retryable = resolve({"non_retryable": ["ValueError,myapp.Bad"]}, {}, {})["non_retryable"]
    assert non_retryable == ["ValueError", "myapp.Bad"]


def test_sources_say_where_each_value_came_from() -> None:
    where = sources({"workers": "2"}, {"PROCPOOL_KAFKA_GROUP_ID": "g"}, {"topic": ["t"]})
    assert where["workers"] == "flag"
    assert where["group_id"] == "PROCPOOL_KAFKA_GROUP_ID"
    assert where["topic"] == "config file"
    assert where["jitter"] == "default"


def test_unknown_variables_are_warned_about_with_a_hint() -> None:
    environ = {
        "PROCPOOL_KAFKA_WORKRES": "2",
        "PROCPOOL_KAFKA_GROUP_ID": "g",
        "PROCPOOL_KAFKA_CACHE": "/tmp/c",  # scripts/kafka-local's, not an option
        "PROCPOOL_KAFKA_HANDLER": "m:f",
        "PROCPOOL_KAFKA_CONFIG": "c.toml",
    }
    assert unknown_variables(environ) == [
        "unknown environment variable PROCPOOL_KAFKA_WORKRES ignored "
        "(did you mean PROCPOOL_KAFKA_WORKERS?)"
    ]


def test_every_setting_maps_to_an_existing_option() -> None:
    names = {option.name for option in OPTIONS}
    assert set(FLAG_OF_SETTING.values()) <= names


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: ConsumerConfig(**BASE, workers=0), "--workers (from flag): must be >= 1, got 0"),
        (
            lambda: ConsumerConfig(**BASE, task_timeout=0),
            "--task-timeout (from default): must be > 0, got 0",
        ),
        (
            lambda: Backoff(jitter=1.5),
            "--jitter (from PROCPOOL_KAFKA_JITTER): must be in [0, 1), got 1.5",
        ),
        (
            lambda: RetryPolicy(topic="t", max_attempts=0),
            "--max-attempts (from flag): must be an int >= 1, got 0",
        ),
        (
            lambda: ConsumerConfig(**{**BASE, "topics": ["tiles,thumbnails"]}),
            "--topic (from flag): 'tiles,thumbnails' is not a valid topic name: ',' not allowed",
        ),
    ],
)
def test_library_errors_are_translated_to_flags(make: Any, expected: str) -> None:
    where = {
        "workers": "flag",
        "task_timeout": "default",
        "jitter": "PROCPOOL_KAFKA_JITTER",
        "max_attempts": "flag",
        "topic": "flag",
    }
    with pytest.raises(ConfigError) as caught:
        make()
    assert describe_config_error(caught.value, where).startswith(expected)


def test_help_shows_every_default() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "hard limit per handler call (seconds, or off) (default: off)" in text
    assert "(default: the CPUs this process may use)" in text
    assert "consumer group id (required)" in text
    assert "(default: false)" in text
    for action in parser._actions[1:]:
        assert "(default: " in (action.help or "") or "(required)" in (action.help or ""), (
            action.dest
        )


def test_config_file_keys_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[procpool-kafka]\ngroup-id = "g"\nmax_in_flight = 7\n')
    assert load_file(str(path)) == {"group_id": "g", "max_in_flight": 7}
    path.write_text('group-id = "g"\nno-such-option = 1\n')
    with pytest.raises(ConfigError, match="unknown option"):
        load_file(str(path))
    path.write_text("group-id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(str(path))


def test_group_protocol_from_flag_env_and_file(tmp_path: Path) -> None:
    assert resolve({}, {}, {})["group_protocol"] == "classic"
    path = tmp_path / "c.toml"
    path.write_text('group-protocol = "consumer"\n')
    from_file = load_file(str(path))
    assert resolve({}, {}, from_file)["group_protocol"] == "consumer"
    environ = {"PROCPOOL_KAFKA_GROUP_PROTOCOL": "classic"}
    assert resolve({}, environ, from_file)["group_protocol"] == "classic", "env beats the file"
    flags = {"group_protocol": "consumer"}
    values = resolve(flags, environ, from_file)
    values.update(bootstrap_servers="127.0.0.1:9092", group_id="g", topic=["t"])
    assert build_config(values).group_protocol == "consumer"


def test_topic_map_errors() -> None:
    with pytest.raises(ConfigError, match="expected TOPIC=NAME"):
        parse_topic_map("dlq-topic", ["a="])
