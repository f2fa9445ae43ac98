"""Option resolution of the CLI: flag > env > file > default, and value conversion."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpool_kafka.cli import build_config
from procpool_kafka.cli_options import load_file, parse_topic_map, resolve
from procpool_kafka.errors import ConfigError
from procpool_kafka.progress import format_progress


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
        ({"workers": "x"}, "--workers (from flag): invalid value"),
        ({"until_end": "maybe"}, "--until-end"),
        ({"kafka_config": ["novalue"]}, "expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_option(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(flags, {}, {})


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


def test_progress_line() -> None:
    line = format_progress(50, 200, 10.0, bar=False)
    assert line == "progress: 50/200 records (25%) 5 records/s ETA 30s"
    assert format_progress(200, 200, 2.0, bar=True).startswith("[" + "#" * 30 + "]")
