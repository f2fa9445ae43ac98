"""librdkafka's log lines routed through Python logging, one logger per client role, with
repeats rate-limited.

librdkafka logs each failed reconnect (``FAIL``) at ERROR, many times a second while a broker
is down, and names every client ``rdkafka#producer-N`` or ``rdkafka#consumer-N`` (the admin
client too). :func:`with_librdkafka_logger` gives a client's settings a ``logger`` that
writes to ``procpool_kafka.librdkafka.<role>`` (``consumer``, ``producer`` or ``admin``) and
lets the same message through at most once per :data:`REPEAT_WINDOW` seconds; the next one
let through says how many repeats were left out. Messages count as the same when they
differ only in numbers (``after 0ms`` and ``after 3ms``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["consumer", "producer", "admin"]

#: seconds during which repeats of one message are counted instead of logged
REPEAT_WINDOW = 10.0
LOGGER_PREFIX = "procpool_kafka.librdkafka"

_NUMBERS = re.compile(r"\d+")


@dataclass
class _Seen:
    logged_at: float
    suppressed: int = 0


class RateLimitedLog:
    """The ``logger`` object librdkafka calls (``log(level, fmt, facility, name, message)``)."""

    def __init__(
        self,
        role: Role,
        window: float = REPEAT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logging.getLogger(f"{LOGGER_PREFIX}.{role}")
        self._window = window
        self._clock = clock
        self._seen: dict[tuple[int, str], _Seen] = {}
        self._lock = threading.Lock()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """confluent-kafka passes ``"%s [%s] %s", facility, client name, message``."""
        if len(args) == 3:
            facility, _client_name, message = (str(arg) for arg in args)
            text = f"{facility}: {message}"
        else:
            text = fmt % args if args else fmt
        if not self.logger.isEnabledFor(level):
            return
        suppressed = self._admit(level, text)
        if suppressed is None:
            return
        if suppressed:
            text = f"{text} ({suppressed} repeats in the last {self._window:g}s not logged)"
        self.logger.log(level, "%s", text)

    def _admit(self, level: int, text: str) -> int | None:
        """None to drop this line, else how many repeats were dropped before it."""
        key = (level, _NUMBERS.sub("#", text))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.logged_at < self._window:
                seen.suppressed += 1
                return None
            suppressed = seen.suppressed if seen is not None else 0
            self._seen[key] = _Seen(logged_at=now)
            if len(self._seen) > 1000:  # forget old messages; a client runs for days
                self._seen = {k: v for k, v in self._seen.items() if now - v.logged_at < 60}
            return suppressed


def with_librdkafka_logger(settings: Mapping[str, Any], role: Role) -> dict[str, Any]:
    """``settings`` plus a rate-limited logger for a client of ``role``: librdkafka's log
    lines go to Python logging (``procpool_kafka.librdkafka.<role>``), never to stderr.

    ``log.queue`` keeps librdkafka from calling the logger on its own threads (it does so
    before confluent-kafka forwards the log to the poll queue): Python code there may run the
    garbage collector, and a client collected on a librdkafka thread aborts the process
    (librdkafka refuses to be destroyed from its own threads). The lines are then served by
    ``poll()``/``consume()`` on the caller's thread.
    """
    return {**settings, "logger": RateLimitedLog(role), "log.queue": True}
