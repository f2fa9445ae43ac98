"""The command's logging (procpool_kafka.cli.logging): formats, levels, secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from procpool_kafka.cli.logging import (
    JsonFormatter,
    RedactingFilter,
    configure_logging,
    redact_secrets,
)
from procpool_kafka.config import REDACTED
from procpool_kafka.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    configure_logging("INFO", "text", [])  # forget the test's secrets
    root.handlers[:] = handlers
    root.setLevel(level)


def _record(msg: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    record = logging.LogRecord("procpool_kafka.test", logging.INFO, __file__, 1, msg, args, None)
    if exc_info:
        try:
            raise RuntimeError("login failed with s3cret-pass")
        except RuntimeError:
            record.exc_info = sys.exc_info()
    return record


def test_every_secret_is_replaced_the_longest_first() -> None:
    configure_logging("INFO", "text", ["s3cret", "s3cret-pass", ""])
    assert redact_secrets("password s3cret-pass, old s3cret") == (
        f"password {REDACTED}, old {REDACTED}"
    )
    assert redact_secrets("nothing to hide") == "nothing to hide"


def test_the_filter_redacts_messages_arguments_and_tracebacks() -> None:
    configure_logging("INFO", "text", ["s3cret-pass"])
    record = _record("connecting with %s", "s3cret-pass", exc_info=True)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == f"connecting with {REDACTED}"
    assert record.exc_text is not None
    assert "s3cret-pass" not in record.exc_text
    assert f"login failed with {REDACTED}" in record.exc_text


def test_the_filter_leaves_clean_records_alone() -> None:
    configure_logging("INFO", "text", ["s3cret-pass"])
    record = _record("%d records", 3)
    RedactingFilter().filter(record)
    assert (record.msg, record.args) == ("%d records", (3,))


def test_json_lines_carry_time_level_logger_message_and_exception() -> None:
    entry = json.loads(JsonFormatter().format(_record("%d records", 3, exc_info=True)))
    assert set(entry) == {"time", "level", "logger", "message", "exception"}
    assert entry["level"] == "INFO"
    assert entry["logger"] == "procpool_kafka.test"
    assert entry["message"] == "3 records"
    assert entry["time"].endswith("Z")
    assert "RuntimeError: login failed" in entry["exception"]
    assert "exception" not in json.loads(JsonFormatter().format(_record("plain")))


def test_configure_logging_writes_redacted_json_to_stderr_at_the_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("warning", "json", ["s3cret-pass"])
    logging.getLogger("procpool_kafka.test").info("not shown")
    logging.getLogger("procpool_kafka.test").warning("password is %s", "s3cret-pass")
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["message"] == f"password is {REDACTED}"
    assert len(logging.getLogger().handlers) == 1


@pytest.mark.parametrize(
    ("level", "log_format", "message"),
    [
        ("LOUD", "text", "--log-level: unknown level 'LOUD'"),
        ("INFO", "xml", "--log-format must be text or json, got 'xml'"),
    ],
)
def test_bad_level_or_format_is_a_config_error(level: str, log_format: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        configure_logging(level, log_format, [])
    assert str(caught.value) == message
