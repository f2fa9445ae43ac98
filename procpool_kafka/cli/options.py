"""The options of ``procpool-kafka run``: one table, resolved flag > env > file > default.

Each option has a long flag (the contract), an environment variable
``PROCPOOL_KAFKA_<NAME>`` (dashes become underscores) and a key in the TOML file given with
``--config`` (dashes or underscores). List options take repeated flags, comma-separated values
(in a flag, the environment or a TOML string) or a TOML array; the same text means the same
in every source. ``TOPIC=NAME[,NAME...]`` options read ``a=a-r1,a-r2,b=b-r1`` as two items
(a comma-separated part without ``=`` belongs to the item before it; ``;`` also separates).
``kafka-config`` takes ``key=value`` flags, an environment value of ``key=value`` pairs
separated by ``;`` or newlines, or a TOML table, merged key by key with the same precedence.

Bad values are one line naming the flag, where the value came from and the value itself;
:func:`describe_config_error` turns a library ConfigError (which names a setting such as
``backoff.jitter``) into that form through :data:`FLAG_OF_SETTING`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
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
    TOPIC_MAP = "topic-map"  # TOPIC=NAME[,NAME...] items
    MAPPING = "mapping"


_KIND_EXPECTS = {
    Kind.INT: "a whole number",
    Kind.FLOAT: "a number",
    Kind.OPTIONAL_FLOAT: "a number or off",
    Kind.BOOL: "true or false",
    Kind.LIST: "a list",
    Kind.TOPIC_MAP: "a list of TOPIC=NAME[,NAME...]",
}


@dataclass(frozen=True)
class Option:
    name: str
    kind: Kind
    default: Any
    help: str
    short: str | None = None
    metavar: str | None = None
    #: what --help shows as the default when ``default`` says nothing (None or empty)
    shown_default: str | None = None
    #: why a converted value is unacceptable (None when fine), for CLI-only options
    check: Callable[[Any], str | None] | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0, got {value:g}"


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else f"must be a port in 0..65535, got {value}"


OPTIONS: tuple[Option, ...] = (
    Option(
        "bootstrap-servers",
        Kind.STR,
        None,
        "Kafka bootstrap servers (host:port,...)",
        "-b",
        shown_default="required",
    ),
    Option("group-id", Kind.STR, None, "consumer group id", "-G", shown_default="required"),
    Option(
        "topic",
        Kind.LIST,
        [],
        "topic(s) to consume: repeatable, or comma-separated",
        "-t",
        "TOPIC",
        shown_default="required",
    ),
    Option(
        "workers",
        Kind.INT,
        None,
        "worker processes",
        "-w",
        shown_default="the CPUs this process may use",
    ),
    Option("max-in-flight", Kind.INT, 5000, "records queued or running at most"),
    Option("revoke-timeout", Kind.FLOAT, 30.0, "seconds running work gets at a rebalance/stop"),
    Option(
        "task-timeout",
        Kind.OPTIONAL_FLOAT,
        None,
        "hard limit per handler call (seconds, or off)",
        shown_default="off",
    ),
    Option(
        "heartbeat-timeout",
        Kind.OPTIONAL_FLOAT,
        120.0,
        "kill a worker silent this long (seconds, or off)",
    ),
    Option("crash-limit", Kind.INT, 3, "worker deaths on one record before WorkerCrashed"),
    Option("batch-size", Kind.INT, None, "records per pool task", shown_default="adaptive"),
    Option(
        "retry-topic",
        Kind.TOPIC_MAP,
        [],
        "TOPIC=RETRY[,RETRY2...] retry tiers (repeatable)",
        metavar="TOPIC=RETRY",
        shown_default="none",
    ),
    Option("max-attempts", Kind.INT, 5, "handler attempts per record, first included"),
    Option("initial-delay", Kind.FLOAT, 15.0, "seconds before the first retry"),
    Option("backoff-multiplier", Kind.FLOAT, 2.0, "delay growth per further retry"),
    Option("max-delay", Kind.FLOAT, 900.0, "longest retry delay (seconds)"),
    Option("jitter", Kind.FLOAT, 0.1, "random share of each retry delay (0..1)"),
    Option(
        "dlq-topic",
        Kind.TOPIC_MAP,
        [],
        "TOPIC=DLQ dead-letter topic (repeatable)",
        metavar="TOPIC=DLQ",
        shown_default="none",
    ),
    Option(
        "non-retryable",
        Kind.LIST,
        [],
        "exception type (ValueError, myapp.errors.BadInput) sent straight to the DLQ "
        "(repeatable, or comma-separated)",
        metavar="TYPE",
        shown_default="none",
    ),
    Option("create-topics", Kind.BOOL, False, "create missing retry and dead-letter topics"),
    Option(
        "kafka-config",
        Kind.MAPPING,
        {},
        "librdkafka setting key=value (repeatable)",
        "-X",
        "KEY=VALUE",
        shown_default="none",
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
    Option(
        "metrics-port",
        Kind.INT,
        None,
        "serve /metrics, /healthz, /readyz on this port (0: any free port)",
        shown_default="off",
        check=_port,
    ),
    Option("metrics-host", Kind.STR, "127.0.0.1", "address the metrics endpoint binds to"),
    Option(
        "app-dir",
        Kind.STR,
        None,
        "directory to import the handler from",
        shown_default="current directory and PYTHONPATH",
    ),
    Option(
        "progress-interval",
        Kind.FLOAT,
        10.0,
        "seconds between progress lines (not a TTY)",
        check=_positive,
    ),
)

OPTIONS_BY_DEST = {option.dest: option for option in OPTIONS}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option to ``parser``; nothing is defaulted there (resolution does that)."""
    for option in OPTIONS:
        flags = [f"--{option.name}"] + ([option.short] if option.short else [])
        shown_value = option.shown_default
        if shown_value is None and option.default not in (None, [], {}):
            shown_value = str(option.default).lower() if option.kind is Kind.BOOL else None
            shown_value = shown_value or str(option.default)
        shown = "" if shown_value is None else f" (default: {shown_value})"
        shown = " (required)" if shown_value == "required" else shown
        help_text = f"{option.help}{shown} [env {option.env}]"
        if option.kind is Kind.BOOL:
            parser.add_argument(
                *flags,
                dest=option.dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif option.kind in (Kind.LIST, Kind.TOPIC_MAP, Kind.MAPPING):
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


def sources(
    flags: Mapping[str, Any], environ: Mapping[str, str], file_values: Mapping[str, Any]
) -> dict[str, str]:
    """Where each option's value came from: ``flag``, the variable's name, ``config file``
    or ``default`` (for kafka-config, every source that set a key)."""
    found: dict[str, str] = {}
    for option in OPTIONS:
        if option.kind is Kind.MAPPING:
            given = [
                name
                for name, present in (
                    ("flag", option.dest in flags),
                    (option.env, option.env in environ),
                    ("config file", option.dest in file_values),
                )
                if present
            ]
            found[option.dest] = " or ".join(given) or "default"
        elif option.dest in flags:
            found[option.dest] = "flag"
        elif option.env in environ:
            found[option.dest] = option.env
        elif option.dest in file_values:
            found[option.dest] = "config file"
        else:
            found[option.dest] = "default"
    return found


def _convert(option: Option, value: Any, source: str) -> Any:
    where = f"--{option.name} (from {source})"
    try:
        converted = _converted(option, value)
    except (TypeError, ValueError):
        shown = value if isinstance(value, str) else _shown(value)
        expects = _KIND_EXPECTS.get(option.kind, "a text")
        raise ConfigError(f"{where}: expected {expects}, got {shown!r}") from None
    problem = option.check(converted) if option.check and converted is not None else None
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return converted


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _converted(option: Option, value: Any) -> Any:
    if option.kind in (Kind.LIST, Kind.TOPIC_MAP):
        if isinstance(value, str):
            items: list[str] = [value]
        elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
            items = list(value)
        else:
            raise ValueError("expected a list of strings")
        if option.kind is Kind.TOPIC_MAP:
            return [entry for item in items for entry in split_topic_map(item)]
        return [entry for item in items for entry in split_list(item)]
    if option.kind is Kind.BOOL:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError("expected true or false")
    if option.kind is Kind.INT:
        if isinstance(value, bool | float):
            raise ValueError("expected a whole number")
        return int(value)
    if option.kind is Kind.FLOAT:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    if option.kind is Kind.OPTIONAL_FLOAT:
        if str(value).strip().lower() in ("none", "off", ""):
            return None
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a text")
    return value


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` into ``["a", "b", "c"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def split_topic_map(text: str) -> list[str]:
    """``"a=a-r1,a-r2;b=b-r1"`` or ``"a=a-r1,a-r2,b=b-r1"`` into ``["a=a-r1,a-r2",
    "b=b-r1"]``: a comma-separated part without ``=`` belongs to the item before it."""
    items: list[str] = []
    for chunk in text.replace("\n", ";").split(";"):
        chunk_items: list[str] = []
        for part in split_list(chunk):
            if "=" in part or not chunk_items:
                chunk_items.append(part)
            else:
                chunk_items[-1] = f"{chunk_items[-1]},{part}"
        items.extend(chunk_items)
    return items


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


def parse_topic_map(
    option: str, items: Sequence[str], source: str = "flag"
) -> dict[str, list[str]]:
    """``TOPIC=A[,B...]`` items into {topic: [A, B, ...]}."""
    mapping: dict[str, list[str]] = {}
    for item in items:
        topic, sep, targets = item.partition("=")
        names = split_list(targets)
        if not sep or not topic.strip() or not names:
            raise ConfigError(
                f"--{option} (from {source}): expected TOPIC=NAME[,NAME...], got {item!r}"
            )
        if topic.strip() in mapping:
            raise ConfigError(f"--{option} (from {source}): topic {topic.strip()!r} given twice")
        mapping[topic.strip()] = names
    return mapping


#: PROCPOOL_KAFKA_* variables that are not options (``scripts/kafka-local`` reads the last two)
OTHER_VARIABLES = frozenset(
    ENV_PREFIX + name for name in ("CONFIG", "HANDLER", "CACHE", "LOCAL_DIR")
)


def environment() -> dict[str, str]:
    """The PROCPOOL_KAFKA_* variables of this process."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning line per PROCPOOL_KAFKA_* variable that names no option (a typo)."""
    known = {option.env for option in OPTIONS} | OTHER_VARIABLES
    warnings = []
    for name in sorted(set(environ) - known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"unknown environment variable {name} ignored{hint}")
    return warnings


#: library setting (ConsumerConfig, RetryPolicy, Backoff) -> the option that sets it
FLAG_OF_SETTING: dict[str, str] = {
    "bootstrap_servers": "bootstrap-servers",
    "group_id": "group-id",
    "topics": "topic",
    "topic": "topic",
    "workers": "workers",
    "max_in_flight": "max-in-flight",
    "revoke_timeout": "revoke-timeout",
    "task_timeout": "task-timeout",
    "heartbeat_timeout": "heartbeat-timeout",
    "crash_limit": "crash-limit",
    "batch_size": "batch-size",
    "connect_timeout": "connect-timeout",
    "broker_timeout": "broker-timeout",
    "group_protocol": "group-protocol",
    "kafka_config": "kafka-config",
    "retry_topics": "retry-topic",
    "dlq_topic": "dlq-topic",
    "max_attempts": "max-attempts",
    "non_retryable": "non-retryable",
    "backoff.initial_delay": "initial-delay",
    "backoff.multiplier": "backoff-multiplier",
    "backoff.max_delay": "max-delay",
    "backoff.jitter": "jitter",
}


def describe_config_error(error: ConfigError, where_from: Mapping[str, str]) -> str:
    """A library ConfigError in the command line's words: the flag, its source, the problem
    (the bad value included); the library's message when no flag sets that setting."""
    option_name = FLAG_OF_SETTING.get(error.setting or "")
    if option_name is None or error.problem is None:
        return str(error)
    source = where_from.get(option_name.replace("-", "_"), "default")
    return f"--{option_name} (from {source}): {error.problem}"


def config_path(flags: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    path = flags.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    return str(Path(path)) if path else None
