"""Kafka's rule for topic names, checked before any broker is asked.

A topic name is 1 to 249 characters of ``a-z A-Z 0-9 . _ -`` and neither ``.`` nor ``..``
(the broker refuses anything else; a comma usually means a list was passed as one name).
"""

from __future__ import annotations

import re

from procpool_kafka.errors import ConfigError

MAX_TOPIC_NAME_LENGTH = 249
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")
RULE = "1-249 characters of a-z, A-Z, 0-9, '.', '_', '-'"


def topic_name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid Kafka topic name, or None when it is."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a topic name"
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        return f"{name[:40]!r}... is {len(name)} characters long (Kafka allows {RULE})"
    if name in (".", ".."):
        return f"{name!r} is not a valid topic name"
    if not _LEGAL.fullmatch(name):
        bad = sorted({char for char in name if not _LEGAL.fullmatch(char)})
        shown = ", ".join(repr(char) for char in bad)
        return f"{name!r} is not a valid topic name: {shown} not allowed (Kafka allows {RULE})"
    return None


def require_topic_name(setting: str, name: object, owner: str = "") -> None:
    """Raise ConfigError naming ``setting`` when ``name`` is not a valid topic name."""
    problem = topic_name_problem(name)
    if problem is not None:
        prefix = f"{owner}: " if owner else ""
        raise ConfigError(f"{prefix}{setting}: {problem}", setting=setting, problem=problem)
