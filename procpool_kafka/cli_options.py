"""The options of ``procpool-kafka run``: one table, resolved flag > env > file > default.

Each option has a long flag (the contract), an environment variable
``PROCPOOL_KAFKA_<NAME>`` (dashes become underscores) and a key in the TOML file given with
``--config`` (dashes or underscores). List options take repeated flags, a comma-separated
environment value or a TOML array; ``kafka-config`` takes ``key=value`` flags, an environment
value of ``key=value`` pairs separated by ``;`` or newlines, or a TOML table, merged key by key
with the same precedence.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from procpool_kafka.errors import ConfigError

ENV_PREFIX = "PROCPOOL_KAFKA_"


class Kind(Enum):
    STR = "str"
    INT = "int"
    FLOAT = "float"
    OPTIONAL_FLOAT = "optional-float"  # a number, or "none"/"off" to disable
    BOOL = "bool"
    LIST = "list"
    MAPPING = "mapping"


@dataclass(frozen=True)
class Option:
    name: str
    kind: Kind
    default: Any
    help: str
    short: str | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


OPTIONS: tuple[Option, ...] = (
    Option("bootstrap-servers", Kind.STR, None, "Kafka bootstrap servers (host:port,...)", "-b"),
    Option("group-id", Kind.STR, None, "consumer group id", "-G"),
    Option("topic", Kind.LIST, [], "topic to consume (repeatable)", "-t", "TOPIC"),
    Option(
        "workers", Kind.INT, None, "worker processes (default: the CPUs this process may use)", "-w"
    ),
    Option("max-in-flight", Kind.INT, 5000, "records queued or running at most"),
    Option("revoke-timeout", Kind.FLOAT, 30.0, "seconds running work gets at a rebalance/stop"),
    Option("task-timeout", Kind.OPTIONAL_FLOAT, None, "hard limit per handler call (seconds)"),
    Option("heartbeat-timeout", Kind.OPTIONAL_FLOAT, 120.0, "kill a worker silent this long"),
    Option("crash-limit", Kind.INT, 3, "worker deaths on one record before WorkerCrashed"),
    Option("batch-size", Kind.INT, None, "records per pool task (default: adaptive)"),
    Option(
        "retry-topic",
        Kind.LIST,
        [],
        "TOPIC=RETRY[,RETRY2...] retry tiers (repeatable)",
        metavar="TOPIC=RETRY",
    ),
    Option("max-attempts", Kind.INT, 5, "handler attempts per record, first included"),
    Option("initial-delay", Kind.FLOAT, 15.0, "seconds before the first retry"),
    Option("backoff-multiplier", Kind.FLOAT, 2.0, "delay growth per further retry"),
    Option("max-delay", Kind.FLOAT, 900.0, "longest retry delay (seconds)"),
    Option("jitter", Kind.FLOAT, 0.1, "random share of each retry delay (0..1)"),
    Option(
        "dlq-topic", Kind.LIST, [], "TOPIC=DLQ dead-letter topic (repeatable)", metavar="TOPIC=DLQ"
    ),
    Option(
        "non-retryable",
        Kind.LIST,
        [],
        "exception type sent straight to the DLQ (repeatable)",
        metavar="TYPE",
    ),
    Option("create-topics", Kind.BOOL, False, "create missing retry and dead-letter topics"),
    Option(
        "kafka-config",
        Kind.MAPPING,
        {},
        "librdkafka setting key=value (repeatable)",
        "-X",
        "KEY=VALUE",
    ),
    Option(
        "group-protocol",
        Kind.STR,
        "classic",
        "consumer group protocol: classic, or consumer (KIP-848, timing set by the broker)",
    ),
    Option("until-end", Kind.BOOL, False, "batch mode: stop at the end offsets seen at start"),
    Option("wait-retries", Kind.BOOL, False, "with --until-end: also wait for retries it made"),
    Option(
        "fail-on-dlq", Kind.BOOL, False, "with --until-end: exit 3 if a record was dead-lettered"
    ),
    Option("connect-timeout", Kind.FLOAT, 30.0, "seconds to wait for the cluster at start"),
    Option("broker-timeout", Kind.FLOAT, 60.0, "exit 1 when the cluster is lost this long"),
    Option("log-level", Kind.STR, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Option("log-format", Kind.STR, "text", "text or json"),
    Option("metrics-port", Kind.INT, None, "serve /metrics, /healthz, /readyz on this port"),
    Option("metrics-host", Kind.STR, "127.0.0.1", "address the metrics endpoint binds to"),
    Option("app-dir", Kind.STR, None, "directory to import the handler from"),
    Option("progress-interval", Kind.FLOAT, 10.0, "seconds between progress lines (not a TTY)"),
)

OPTIONS_BY_DEST = {option.dest: option for option in OPTIONS}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option to ``parser``; nothing is defaulted there (resolution does that)."""
    for option in OPTIONS:
        flags = [f"--{option.name}"] + ([option.short] if option.short else [])
        shown = "" if option.default in (None, [], {}) else f" (default: {option.default})"
        help_text = f"{option.help}{shown} [env {option.env}]"
        if option.kind is Kind.BOOL:
            parser.add_argument(
                *flags,
                dest=option.dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif option.kind in (Kind.LIST, Kind.MAPPING):
            parser.add_argument(
                *flags,
                dest=option.dest,
                action="append",
                default=argparse.SUPPRESS,
                metavar=option.metavar,
                help=help_text,
            )
        else:
            parser.add_argument(
                *flags,
                dest=option.dest,
                default=argparse.SUPPRESS,
                metavar=option.metavar or option.dest.upper(),
                help=help_text,
            )


def load_file(path: str | None) -> dict[str, Any]:
    """The TOML file's options, keys normalised to option names with underscores."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    section = data.get("procpool-kafka", data.get("procpool_kafka", data))
    normalised = {str(key).replace("-", "_"): value for key, value in section.items()}
    unknown = sorted(set(normalised) - set(OPTIONS_BY_DEST) - {"handler"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown option(s): {', '.join(unknown)}")
    return normalised


def resolve(
    flags: Mapping[str, Any], environ: Mapping[str, str], file_values: Mapping[str, Any]
) -> dict[str, Any]:
    """Every option's value: flag, else environment, else file, else default."""
    resolved: dict[str, Any] = {}
    for option in OPTIONS:
        if option.kind is Kind.MAPPING:
            merged: dict[str, str] = {}
            if option.dest in file_values:
                merged.update(_mapping_from_file(option, file_values[option.dest]))
            if option.env in environ:
                merged.update(_pairs(option, _split_env_pairs(environ[option.env])))
            if option.dest in flags:
                merged.update(_pairs(option, flags[option.dest]))
            resolved[option.dest] = merged
        elif option.dest in flags:
            resolved[option.dest] = _convert(option, flags[option.dest], "flag")
        elif option.env in environ:
            resolved[option.dest] = _convert(option, environ[option.env], option.env)
        elif option.dest in file_values:
            resolved[option.dest] = _convert(option, file_values[option.dest], "config file")
        else:
            resolved[option.dest] = option.default
    return resolved


def _convert(option: Option, value: Any, source: str) -> Any:
    where = f"--{option.name} (from {source})"
    try:
        if option.kind is Kind.LIST:
            if isinstance(value, str):
                return [item.strip() for item in value.split(",") if item.strip()]
            if isinstance(value, Sequence):
                return [str(item) for item in value]
            raise ValueError("expected a list")
        if option.kind is Kind.BOOL:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError("expected true or false")
        if option.kind is Kind.INT:
            if isinstance(value, bool):
                raise ValueError("expected a whole number")
            return int(value)
        if option.kind is Kind.FLOAT:
            return float(value)
        if option.kind is Kind.OPTIONAL_FLOAT:
            if str(value).strip().lower() in ("none", "off", ""):
                return None
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: invalid value for a {option.kind.value} option") from None


def _split_env_pairs(value: str) -> list[str]:
    return [item.strip() for item in value.replace("\n", ";").split(";") if item.strip()]


def _pairs(option: Option, items: Sequence[str]) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--{option.name}: expected KEY=VALUE, got {key.strip()!r}=...")
        result[key.strip()] = value.strip()
    return result


def _mapping_from_file(option: Option, value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): _scalar_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return _pairs(option, [str(item) for item in value])
    raise ConfigError(f"config file: {option.name} must be a table of key = value")


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_topic_map(option: str, items: Sequence[str]) -> dict[str, list[str]]:
    """``TOPIC=A[,B...]`` items into {topic: [A, B, ...]}."""
    mapping: dict[str, list[str]] = {}
    for item in items:
        topic, sep, targets = item.partition("=")
        names = [name.strip() for name in targets.split(",") if name.strip()]
        if not sep or not topic.strip() or not names:
            raise ConfigError(f"--{option}: expected TOPIC=NAME[,NAME...], got {item!r}")
        mapping[topic.strip()] = names
    return mapping


def environment() -> dict[str, str]:
    """The PROCPOOL_KAFKA_* variables of this process."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def config_path(flags: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    path = flags.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    return str(Path(path)) if path else None
