"""Logging for the command line: text or JSON lines on stderr, secrets never written.

Only the CLI configures logging (the library never touches process-global state). Every
record passes a filter that replaces the values of secret settings (sasl.password and
friends) wherever they appear, so a password cannot leak through a message or a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

from procpool_kafka.config import REDACTED
from procpool_kafka.errors import ConfigError

_secrets: list[str] = []


def redact_secrets(text: str) -> str:
    """``text`` with every known secret value replaced."""
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_secrets(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_secrets(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, log_format: str, secrets: Iterable[str]) -> None:
    """Root logging to stderr in ``log_format`` (text or json) at ``level``."""
    _secrets[:] = sorted({s for s in secrets if s}, key=len, reverse=True)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"--log-level: unknown level {level!r}")
    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format must be text or json, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
