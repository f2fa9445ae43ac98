"""Retries and dead letters: backoff, routing, the header codec and the delay schedule.

This module owns everything about a failed record that does not need Kafka:

- :class:`Backoff` and :class:`RetryPolicy`: how long to wait after a failure,
  which retry topic (delay tier) a copy goes to, when to give up, and which
  exception types are worth retrying at all;
- :func:`decide`: the routing decision for one failed attempt
  (:attr:`Route.RETRY`, :attr:`Route.DEAD_LETTER` or :attr:`Route.DROP`);
- the header codec: :func:`retry_headers` and :func:`dead_letter_headers`
  build the headers of the copy, :func:`read_retry_headers` decodes what a
  retry copy says about itself, :func:`original_headers` strips ours;
- :class:`DelaySchedule`: retry copies read before their not-before time,
  at most one held per (paused) partition.

It is pure (no Kafka import, no clock, no logging) so that it can be unit- and
property-tested; the consumer loop supplies the clock and does the producing,
pausing and committing.

Invariant 6 of docs/architecture.md: the consumer calls :func:`read_retry_headers` only
for records read from a configured retry topic (headers on any other topic are
never honoured), and the not-before time it returns is clamped to
``now + max_delay``, so a forged or skewed header cannot park a partition for
longer than the policy allows.

Headers
-------

Every header name starts with ``procpool.`` (:data:`HEADER_PREFIX`); that
prefix is reserved: a retry or dead-letter copy carries the original record's
headers minus any ``procpool.*`` header, followed by ours, so stale values
from an earlier attempt are replaced, never duplicated. Integers are encoded
as ASCII decimal digits (no sign, no spaces), times as epoch milliseconds,
text as UTF-8 (cut at a character boundary, ending with ``…`` when cut).

| Header                        | Encoding   | Meaning                                | On    |
|-------------------------------|------------|----------------------------------------|-------|
| `procpool.attempt`            | decimal    | attempt number of this copy (>= 2)     | retry |
| `procpool.not-before`         | decimal ms | not to be run before this time         | retry |
| `procpool.original-topic`     | UTF-8      | topic of the first delivery            | both  |
| `procpool.original-partition` | decimal    | its partition                          | both  |
| `procpool.original-offset`    | decimal    | its offset                             | both  |
| `procpool.first-failure`      | decimal ms | time of the first failed attempt       | both  |
| `procpool.error-type`         | UTF-8      | last exception type, `module.QualName` | both  |
| `procpool.error-message`      | UTF-8      | its message (cut to a byte limit)      | both  |
| `procpool.error-traceback`    | UTF-8      | its traceback (cut to a byte limit)    | DLQ   |
| `procpool.attempts`           | decimal    | handler attempts made in total         | DLQ   |
| `procpool.consumer-group`     | UTF-8      | consumer group that gave up            | DLQ   |
| `procpool.failed-at`          | decimal ms | time of the last failed attempt        | DLQ   |

"On": written on retry copies, dead-letter (DLQ) copies, or both.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from procpool_kafka.errors import ConfigError
from procpool_kafka.records import Headers, Record, TopicPartition, exception_type_names
from procpool_kafka.topic_names import require_topic_name

__all__ = [
    "HEADER_PREFIX",
    "H_ATTEMPT",
    "H_ATTEMPTS",
    "H_CONSUMER_GROUP",
    "H_ERROR_MESSAGE",
    "H_ERROR_TRACEBACK",
    "H_ERROR_TYPE",
    "H_FAILED_AT",
    "H_FIRST_FAILURE",
    "H_NOT_BEFORE",
    "H_ORIGINAL_OFFSET",
    "H_ORIGINAL_PARTITION",
    "H_ORIGINAL_TOPIC",
    "TRUNCATION_MARKER",
    "Backoff",
    "Decision",
    "DelaySchedule",
    "MalformedRetryHeaders",
    "RetryInfo",
    "RetryPolicy",
    "Route",
    "dead_letter_headers",
    "decide",
    "exception_type_names",
    "original_headers",
    "policy_for",
    "read_retry_headers",
    "retry_headers",
    "retry_policy_for",
    "truncate_utf8",
    "validate_policies",
]

HEADER_PREFIX = "procpool."

H_ATTEMPT = "procpool.attempt"
H_NOT_BEFORE = "procpool.not-before"
H_ORIGINAL_TOPIC = "procpool.original-topic"
H_ORIGINAL_PARTITION = "procpool.original-partition"
H_ORIGINAL_OFFSET = "procpool.original-offset"
H_FIRST_FAILURE = "procpool.first-failure"
H_ERROR_TYPE = "procpool.error-type"
H_ERROR_MESSAGE = "procpool.error-message"
H_ERROR_TRACEBACK = "procpool.error-traceback"
H_ATTEMPTS = "procpool.attempts"
H_CONSUMER_GROUP = "procpool.consumer-group"
H_FAILED_AT = "procpool.failed-at"

#: appended (within the byte limit) to text that :func:`truncate_utf8` cut
TRUNCATION_MARKER = "…"
_MARKER_BYTES = TRUNCATION_MARKER.encode("utf-8")

#: an integer header longer than this is rejected as malformed, not parsed
_MAX_INT_HEADER_BYTES = 32
#: bound on the error-type header (a dotted name; never long in practice)
_MAX_TYPE_BYTES = 512

# used when the caller passes no rng; private, so the global random state is untouched
_RNG = random.Random()


# --------------------------------------------------------------------------- validation helpers


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(setting: str, problem: str, owner: str = "") -> ConfigError:
    """A ConfigError naming ``setting`` (prefixed by the policy it belongs to, if any)."""
    prefix = f"{owner}: " if owner else ""
    return ConfigError(f"{prefix}{setting} {problem}", setting=setting, problem=problem)


#: a dotted Python name: ``ValueError``, ``myapp.errors.BadInput``, ``mod.Outer.Inner``
_DOTTED_NAME = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*")


def _require_type_names(owner: str, name: str, values: tuple[str, ...]) -> None:
    for value in values:
        if not _DOTTED_NAME.fullmatch(value):
            raise _invalid(
                name,
                f"entries must be exception type names like ValueError or "
                f"myapp.errors.BadInput, got {value!r}",
                owner,
            )


def _str_tuple(owner: str, name: str, value: object) -> tuple[str, ...]:
    """``value`` as a tuple of non-empty strings (from a list, a tuple or one lone string)."""
    if isinstance(value, str):
        items: tuple[object, ...] = (value,)
    elif isinstance(value, list | tuple):
        items = tuple(value)
    else:
        raise ConfigError(f"{owner}: {name} must be a list of strings, got {type(value).__name__}")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{owner}: {name} must contain non-empty strings, got {item!r}")
        names.append(item)
    return tuple(names)


# --------------------------------------------------------------------------- backoff


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: how long a retry copy waits.

    The delay after the ``n``-th failure (1-based) is
    ``initial_delay * multiplier ** (n - 1)``, clamped to ``max_delay``, then
    scaled by a uniform factor in ``[1 - jitter, 1 + jitter]`` and clamped to
    ``max_delay`` again. All times are in seconds. With the defaults the
    delays are about 15, 30, 60, 120, 240, 480, 900, 900, ... seconds.
    """

    initial_delay: float = 15.0
    multiplier: float = 2.0
    max_delay: float = 900.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("initial_delay", "multiplier", "max_delay", "jitter"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise _invalid(f"backoff.{name}", f"must be a finite number, got {value!r}")
        if self.initial_delay < 0:
            raise _invalid("backoff.initial_delay", f"must be >= 0, got {self.initial_delay:g}")
        if self.multiplier < 1:
            raise _invalid("backoff.multiplier", f"must be >= 1, got {self.multiplier:g}")
        if self.max_delay < self.initial_delay:
            raise ConfigError(
                f"backoff.max_delay ({self.max_delay!r}) must be >= "
                f"backoff.initial_delay ({self.initial_delay!r})",
                setting="backoff.max_delay",
                problem=f"must be >= the initial delay ({self.initial_delay:g}), "
                f"got {self.max_delay:g}",
            )
        if not 0 <= self.jitter < 1:
            raise _invalid("backoff.jitter", f"must be in [0, 1), got {self.jitter:g}")

    def base_delay(self, failures: int) -> float:
        """The delay after the ``failures``-th failure before jitter, clamped to ``max_delay``."""
        if not _is_int(failures) or failures < 1:
            raise ValueError(f"failures must be an int >= 1, got {failures!r}")
        if self.initial_delay == 0:
            return 0.0
        if self.multiplier == 1:
            return min(float(self.initial_delay), self.max_delay)
        # compare in log space: multiplier ** (failures - 1) overflows for large counts
        steps_to_max = math.log(self.max_delay / self.initial_delay, self.multiplier)
        if failures - 1 >= steps_to_max:
            return float(self.max_delay)
        return min(self.initial_delay * self.multiplier ** (failures - 1), self.max_delay)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure (1-based), jittered and clamped."""
        base = self.base_delay(failures)
        if self.jitter == 0 or base == 0:
            return base
        factor = (rng or _RNG).uniform(1 - self.jitter, 1 + self.jitter)
        return min(max(base * factor, 0.0), float(self.max_delay))


# --------------------------------------------------------------------------- policies


def _name_matches(configured: str, dotted: str) -> bool:
    """``ValueError`` matches ``builtins.ValueError``; a dotted name must match exactly."""
    if configured == dotted:
        return True
    return "." not in configured and dotted.rsplit(".", 1)[-1] == configured


@dataclass(frozen=True)
class RetryPolicy:
    """Retry/DLQ routing for the base topics it matches.

    ``topic`` names one base topic exactly; ``topic_pattern`` is a regular
    expression matched against the whole topic name (``re.fullmatch``).
    Exactly one of them is set.

    ``retry_topics`` is one retry topic, or several delay tiers in increasing
    delay order: the copy for attempt ``n`` goes to tier ``n - 2`` (the last
    tier for every later attempt), so each tier holds copies with similar
    delays and a long delay never blocks a short one behind it (a partition
    is paused while its head copy is not due). An empty tuple means no retries:
    failures go straight to ``dlq_topic``.

    ``max_attempts`` counts every handler attempt, the first delivery
    included (1 = never retry). ``non_retryable`` names exception types that
    go straight to the dead-letter topic; ``retryable``, when set, is an
    allow-list (only those are retried); ``non_retryable`` wins over it. A
    configured name matches an exception type or any of its bases; a name
    without a dot matches on the class name alone (``"ValueError"``), a dotted
    one must equal ``module.QualName`` (``"myapp.errors.Transient"``).

    Without ``dlq_topic``, a record that fails for good is logged and marked
    done (:attr:`Route.DROP`).
    """

    topic: str | None = None
    topic_pattern: str | None = None
    retry_topics: tuple[str, ...] = ()
    max_attempts: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    dlq_topic: str | None = None
    non_retryable: tuple[str, ...] = ()
    retryable: tuple[str, ...] | None = None
    max_error_message_bytes: int = 1024
    max_traceback_bytes: int = 8192
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def name(self) -> str:
        """How error messages and logs refer to this policy."""
        if self.topic is not None:
            return f"retry policy for topic {self.topic!r}"
        return f"retry policy for topic_pattern {self.topic_pattern!r}"

    def validate(self) -> None:
        """Check and normalise the fields (lists become tuples); raise ConfigError naming the field.

        Called by ``__post_init__``; cross-policy checks live in :func:`validate_policies`.
        """
        set_ = object.__setattr__  # frozen: normalise in place, once
        if (self.topic is None) == (self.topic_pattern is None):
            raise ConfigError(
                "retry policy: exactly one of topic or topic_pattern must be set "
                f"(got topic={self.topic!r}, topic_pattern={self.topic_pattern!r})"
            )
        if self.topic is not None:
            require_topic_name("topic", self.topic, "retry policy")
        if self.topic_pattern is not None:
            if not isinstance(self.topic_pattern, str) or not self.topic_pattern:
                raise ConfigError(
                    "retry policy: topic_pattern must be a non-empty string, "
                    f"got {self.topic_pattern!r}"
                )
            try:
                set_(self, "_regex", re.compile(self.topic_pattern))
            except re.error as exc:
                raise ConfigError(
                    f"retry policy: topic_pattern {self.topic_pattern!r} is not a valid "
                    f"regular expression: {exc}"
                ) from None
        owner = self.name

        retry_topics = _str_tuple(owner, "retry_topics", self.retry_topics)
        set_(self, "retry_topics", retry_topics)
        set_(self, "non_retryable", _str_tuple(owner, "non_retryable", self.non_retryable))
        _require_type_names(owner, "non_retryable", self.non_retryable)
        if self.retryable is not None:
            set_(self, "retryable", _str_tuple(owner, "retryable", self.retryable))
            _require_type_names(owner, "retryable", self.retryable)
        for tier in retry_topics:
            require_topic_name("retry_topics", tier, owner)

        if not _is_int(self.max_attempts) or self.max_attempts < 1:
            raise _invalid("max_attempts", f"must be an int >= 1, got {self.max_attempts!r}", owner)
        if not isinstance(self.backoff, Backoff):
            raise ConfigError(
                f"{owner}: backoff must be a Backoff, got {type(self.backoff).__name__}"
            )
        if self.dlq_topic is not None and (
            not isinstance(self.dlq_topic, str) or not self.dlq_topic
        ):
            raise _invalid(
                "dlq_topic", f"must be a non-empty string or None, got {self.dlq_topic!r}", owner
            )
        if self.dlq_topic is not None:
            require_topic_name("dlq_topic", self.dlq_topic, owner)
        for name in ("max_error_message_bytes", "max_traceback_bytes"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"{owner}: {name} must be an int >= 0, got {value!r}")

        seen: set[str] = set()
        for tier in retry_topics:
            if tier in seen:
                raise _invalid("retry_topics", f"lists {tier!r} twice", owner)
            seen.add(tier)
            if tier == self.topic:
                raise ConfigError(
                    f"{owner}: retry_topics entry {tier!r} is a base topic of the same policy "
                    "(its records would be consumed as first deliveries)",
                    setting="retry_topics",
                    problem=f"{tier!r} is the topic itself (its records would be consumed as "
                    "first deliveries)",
                )
            if tier == self.dlq_topic:
                raise ConfigError(
                    f"{owner}: retry_topics entry {tier!r} is also the dlq_topic",
                    setting="retry_topics",
                    problem=f"{tier!r} is also the dead-letter topic",
                )
        if self.dlq_topic is not None and self.dlq_topic == self.topic:
            raise ConfigError(
                f"{owner}: dlq_topic {self.dlq_topic!r} is a base topic of the same policy "
                "(dead letters would be consumed again)",
                setting="dlq_topic",
                problem=f"{self.dlq_topic!r} is the topic itself (dead letters would be "
                "consumed again)",
            )

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` is one of this policy's base topics.

        A ``topic_pattern`` never matches the policy's own retry and dead-letter topics:
        ``orders-.*`` with ``orders-retry-1m`` and ``orders-dlq`` matches ``orders-eu`` only.
        """
        if self.topic is not None:
            return topic == self.topic
        assert self._regex is not None
        if topic in self.retry_topics or topic == self.dlq_topic:
            return False
        return self._regex.fullmatch(topic) is not None

    def is_retryable(self, error_types: Sequence[str]) -> bool:
        """Whether a failure with these type names (most derived first, dotted) may be retried."""
        if isinstance(error_types, str):  # a lone name, not its characters
            error_types = (error_types,)

        def listed(configured: Sequence[str]) -> bool:
            return any(_name_matches(c, t) for c in configured for t in error_types)

        if listed(self.non_retryable):
            return False
        if self.retryable is not None:
            return listed(self.retryable)
        return True

    def retry_topic_for(self, attempt: int) -> str:
        """The retry tier for the copy that will be attempt number ``attempt`` (>= 2)."""
        if not self.retry_topics:
            raise ValueError(f"{self.name} has no retry_topics")
        if not _is_int(attempt) or attempt < 2:
            raise ValueError(f"a retry copy's attempt is >= 2, got {attempt!r}")
        return self.retry_topics[min(attempt - 2, len(self.retry_topics) - 1)]


def policy_for(policies: Sequence[RetryPolicy], topic: str) -> RetryPolicy | None:
    """The first policy whose base topics include ``topic``, or None."""
    for policy in policies:
        if policy.matches(topic):
            return policy
    return None


def retry_policy_for(policies: Sequence[RetryPolicy], topic: str) -> RetryPolicy | None:
    """The first policy that lists ``topic`` among its retry topics, or None.

    Only records from such a topic may have their retry headers read (invariant 6).
    """
    for policy in policies:
        if topic in policy.retry_topics:
            return policy
    return None


def validate_policies(policies: Sequence[RetryPolicy]) -> None:
    """Checks across policies: a retry or dead-letter topic of one policy must not be a
    base topic of any policy, nor a retry topic of another (ConfigError names both)."""
    owners: dict[str, RetryPolicy] = {}
    for policy in policies:
        for tier in policy.retry_topics:
            other = owners.get(tier)
            if other is not None and other is not policy:
                problem = f"{tier!r} is used by both the {other.name} and the {policy.name}"
                raise ConfigError(
                    f"retry_topics entry {problem}", setting="retry_topics", problem=problem
                )
            owners[tier] = policy
    for policy in policies:
        special = [("retry_topics", "retry_topics entry", t) for t in policy.retry_topics]
        if policy.dlq_topic is not None:
            special.append(("dlq_topic", "dlq_topic", policy.dlq_topic))
        for setting, what, name in special:
            for other in policies:
                if other.matches(name):
                    problem = f"{name!r} is a base topic of the {other.name}"
                    raise ConfigError(
                        f"{policy.name}: {what} {problem}", setting=setting, problem=problem
                    )
        if policy.dlq_topic is not None and policy.dlq_topic in owners:
            problem = (
                f"{policy.dlq_topic!r} is a retry topic of the {owners[policy.dlq_topic].name}"
            )
            raise ConfigError(
                f"{policy.name}: dlq_topic {problem}", setting="dlq_topic", problem=problem
            )


# --------------------------------------------------------------------------- routing


class Route(enum.Enum):
    """Where a failed record goes."""

    RETRY = "retry"
    DEAD_LETTER = "dead-letter"
    #: no dead-letter topic configured (or no policy): log the failure and mark the record done
    DROP = "drop"


@dataclass(frozen=True)
class Decision:
    """The routing of one failed attempt.

    ``attempt`` is the attempt number of the copy for :attr:`Route.RETRY`,
    and the number of attempts made for the other routes. ``not_before_ms``
    (epoch ms) is set for :attr:`Route.RETRY` only; ``topic`` is None for
    :attr:`Route.DROP`.
    """

    route: Route
    topic: str | None
    attempt: int
    not_before_ms: int | None


def decide(
    policy: RetryPolicy | None,
    attempt: int,
    error_types: Sequence[str],
    now_ms: int,
    rng: random.Random | None = None,
) -> Decision:
    """Route the failure of attempt number ``attempt`` (1 for a first delivery).

    RETRY when the policy has retry topics, attempts remain and the error is
    retryable; otherwise DEAD_LETTER when the policy has a dead-letter topic;
    otherwise (or without a policy) DROP.
    """
    if not _is_int(attempt) or attempt < 1:
        raise ValueError(f"attempt must be an int >= 1, got {attempt!r}")
    if policy is None:
        return Decision(Route.DROP, None, attempt, None)
    if policy.retry_topics and attempt < policy.max_attempts and policy.is_retryable(error_types):
        next_attempt = attempt + 1
        delay_ms = math.ceil(policy.backoff.delay(attempt, rng) * 1000)
        return Decision(
            Route.RETRY, policy.retry_topic_for(next_attempt), next_attempt, now_ms + delay_ms
        )
    if policy.dlq_topic is not None:
        return Decision(Route.DEAD_LETTER, policy.dlq_topic, attempt, None)
    return Decision(Route.DROP, None, attempt, None)


# --------------------------------------------------------------------------- header codec


class MalformedRetryHeaders(ValueError):
    """A retry-topic record lacks a valid ``procpool.attempt`` or ``procpool.not-before``."""


@dataclass(frozen=True)
class RetryInfo:
    """What our headers say about a record read from a retry topic.

    ``not_before_ms`` is already clamped (see :func:`read_retry_headers`).
    The ``original_*`` and ``first_failure_ms`` fields are informational: None
    when missing or undecodable (they never make the headers malformed).
    """

    attempt: int
    not_before_ms: int
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    first_failure_ms: int | None


def truncate_utf8(text: str, max_bytes: int) -> bytes:
    """``text`` as UTF-8 in at most ``max_bytes`` bytes, cut only at a character boundary.

    When cut, it ends with ``…`` (3 bytes), inside the limit (unless the limit
    is below 3 bytes, then it is cut without a marker). Characters UTF-8
    cannot encode (lone surrogates) become ``?``.
    """
    if not _is_int(max_bytes) or max_bytes < 0:
        raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return encoded
    marker = _MARKER_BYTES if max_bytes >= len(_MARKER_BYTES) else b""
    cut = max_bytes - len(marker)
    # step back over continuation bytes (10xxxxxx) to the start of the character at `cut`
    while cut > 0 and encoded[cut] & 0xC0 == 0x80:
        cut -= 1
    return encoded[:cut] + marker


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")


def _decimal(value: int) -> bytes:
    if not _is_int(value) or value < 0:
        raise ValueError(f"header integers are >= 0, got {value!r}")
    return str(value).encode("ascii")


def _last(headers: Headers, name: str) -> bytes | None:
    for header_name, value in reversed(headers):
        if header_name == name:
            return value
    return None


def _parse_decimal(value: bytes) -> int | str:
    """The integer, or the reason it is malformed."""
    if len(value) > _MAX_INT_HEADER_BYTES:
        return f"{len(value)} bytes long (at most {_MAX_INT_HEADER_BYTES})"
    if not value:
        return "empty"
    if value.startswith(b"-") and value[1:].isdigit():
        return f"negative ({value.decode('ascii')})"
    if not value.isdigit():  # bytes.isdigit: ASCII 0-9 only
        return f"not an ASCII decimal number ({value!r})"
    return int(value)


def _required_int(headers: Headers, name: str) -> int:
    value = _last(headers, name)
    if value is None:
        raise MalformedRetryHeaders(f"header {name} is missing")
    parsed = _parse_decimal(value)
    if isinstance(parsed, str):
        raise MalformedRetryHeaders(f"header {name} is {parsed}")
    return parsed


def _optional_int(headers: Headers, name: str) -> int | None:
    value = _last(headers, name)
    if value is None:
        return None
    parsed = _parse_decimal(value)
    return None if isinstance(parsed, str) else parsed


def read_retry_headers(
    headers: Headers, now_ms: int, max_delay: float, skew: float = 5.0
) -> RetryInfo:
    """Decode our headers of a record read from a configured retry topic.

    Raises :class:`MalformedRetryHeaders` (its message gives the reason) when
    ``procpool.attempt`` or ``procpool.not-before`` is missing, empty, not
    ASCII decimal, negative or longer than 32 bytes, or the attempt is 0. A
    header given twice counts by its last value. A not-before later than
    ``now + max_delay + skew`` (seconds) is clamped to ``now + max_delay``.

    Call it only for records of configured retry topics (invariant 6); the
    consumer treats malformed headers as ``attempt = max_attempts`` (so the
    record goes to the dead-letter topic when it fails) and logs a warning.
    """
    attempt = _required_int(headers, H_ATTEMPT)
    if attempt < 1:
        raise MalformedRetryHeaders(f"header {H_ATTEMPT} is {attempt} (attempts start at 1)")
    not_before_ms = _required_int(headers, H_NOT_BEFORE)
    if not_before_ms > now_ms + math.ceil((max_delay + skew) * 1000):
        not_before_ms = now_ms + math.ceil(max_delay * 1000)

    topic_value = _last(headers, H_ORIGINAL_TOPIC)
    original_topic: str | None = None
    if topic_value:
        try:
            original_topic = topic_value.decode("utf-8")
        except UnicodeDecodeError:
            original_topic = None
    return RetryInfo(
        attempt=attempt,
        not_before_ms=not_before_ms,
        original_topic=original_topic,
        original_partition=_optional_int(headers, H_ORIGINAL_PARTITION),
        original_offset=_optional_int(headers, H_ORIGINAL_OFFSET),
        first_failure_ms=_optional_int(headers, H_FIRST_FAILURE),
    )


def original_headers(headers: Headers) -> Headers:
    """``headers`` without ours (every ``procpool.*`` header), order kept."""
    return [(name, value) for name, value in headers if not name.startswith(HEADER_PREFIX)]


def _common_headers(
    original: tuple[str, int, int],
    first_failure_ms: int,
    error_type: str,
    error_message: str,
    max_message_bytes: int,
) -> Headers:
    topic, partition, offset = original
    return [
        (H_ORIGINAL_TOPIC, _text(topic)),
        (H_ORIGINAL_PARTITION, _decimal(partition)),
        (H_ORIGINAL_OFFSET, _decimal(offset)),
        (H_FIRST_FAILURE, _decimal(first_failure_ms)),
        (H_ERROR_TYPE, truncate_utf8(error_type, _MAX_TYPE_BYTES)),
        (H_ERROR_MESSAGE, truncate_utf8(error_message, max_message_bytes)),
    ]


def retry_headers(
    record_headers: Headers,
    *,
    attempt: int,
    not_before_ms: int,
    original: tuple[str, int, int],
    first_failure_ms: int,
    error_type: str,
    error_message: str,
    max_message_bytes: int,
) -> Headers:
    """Headers of a retry copy: the record's own headers minus ``procpool.*``, then ours.

    ``original`` is (topic, partition, offset) of the first delivery; for a
    record that is itself a retry copy the caller carries ``original`` and
    ``first_failure_ms`` over from its :class:`RetryInfo`.
    """
    return [
        *original_headers(record_headers),
        (H_ATTEMPT, _decimal(attempt)),
        (H_NOT_BEFORE, _decimal(not_before_ms)),
        *_common_headers(original, first_failure_ms, error_type, error_message, max_message_bytes),
    ]


def dead_letter_headers(
    record_headers: Headers,
    *,
    attempts: int,
    original: tuple[str, int, int],
    first_failure_ms: int | None,
    error_type: str,
    error_message: str,
    traceback: str,
    consumer_group: str,
    failed_at_ms: int,
    max_message_bytes: int,
    max_traceback_bytes: int,
) -> Headers:
    """Headers of a dead-letter copy: the record's own headers minus ``procpool.*``, then ours.

    ``first_failure_ms`` None means this failure is the first one known
    (a first delivery): ``failed_at_ms`` is written in its place. No
    ``procpool.attempt``/``procpool.not-before`` header is written.
    """
    first = failed_at_ms if first_failure_ms is None else first_failure_ms
    return [
        *original_headers(record_headers),
        *_common_headers(original, first, error_type, error_message, max_message_bytes),
        (H_ERROR_TRACEBACK, truncate_utf8(traceback, max_traceback_bytes)),
        (H_ATTEMPTS, _decimal(attempts)),
        (H_CONSUMER_GROUP, _text(consumer_group)),
        (H_FAILED_AT, _decimal(failed_at_ms)),
    ]


# --------------------------------------------------------------------------- delay schedule


class DelaySchedule:
    """Records from retry topics that are not yet due, at most one held per partition.

    The consumer holds the head record of a retry-topic partition that is not
    due yet and pauses that partition (later records of it that were already
    fetched are discarded and fetched again after a seek on resume). When
    :meth:`pop_due` hands the record back, the consumer dispatches it and
    resumes the partition. On revoke or loss, :meth:`drop` forgets the
    partitions' records (the new owner reads them again from the committed
    offset).
    """

    def __init__(self) -> None:
        # heap of (due_ms, seq, tp); an entry is live while _held[tp] has the same seq
        self._heap: list[tuple[int, int, TopicPartition]] = []
        self._held: dict[TopicPartition, tuple[int, int, Record]] = {}
        self._seq = 0

    def hold(self, tp: TopicPartition, record: Record, due_ms: int) -> None:
        """Hold ``record`` of partition ``tp`` until ``due_ms`` (epoch ms)."""
        if tp in self._held:
            raise ValueError(f"{tp.topic}[{tp.partition}] already holds a record")
        if record.topic_partition != tp:
            raise ValueError(f"{record!r} is not a record of {tp.topic}[{tp.partition}]")
        self._seq += 1
        self._held[tp] = (due_ms, self._seq, record)
        heapq.heappush(self._heap, (due_ms, self._seq, tp))

    def holding(self, tp: TopicPartition) -> bool:
        """Whether partition ``tp`` has a record held (and so should stay paused)."""
        return tp in self._held

    def partitions(self) -> set[TopicPartition]:
        """The partitions holding a record."""
        return set(self._held)

    def _prune(self) -> None:
        """Pop stale heap entries (of dropped records) off the top."""
        while self._heap:
            _, seq, tp = self._heap[0]
            held = self._held.get(tp)
            if held is not None and held[1] == seq:
                return
            heapq.heappop(self._heap)

    def pop_due(self, now_ms: int) -> list[Record]:
        """Remove and return the records due at ``now_ms`` (due time <= now), earliest first."""
        due: list[Record] = []
        self._prune()
        while self._heap and self._heap[0][0] <= now_ms:
            _, _, tp = heapq.heappop(self._heap)
            due.append(self._held.pop(tp)[2])
            self._prune()
        return due

    def next_due_ms(self) -> int | None:
        """The earliest due time held, or None when nothing is held."""
        self._prune()
        return self._heap[0][0] if self._heap else None

    def drop(self, partitions: Iterable[TopicPartition]) -> list[Record]:
        """Forget the records held for ``partitions``; return them, earliest due first."""
        dropped = [self._held.pop(tp) for tp in set(partitions) if tp in self._held]
        dropped.sort(key=lambda entry: (entry[0], entry[1]))
        if len(self._heap) > 4 * len(self._held) + 16:  # keep stale entries bounded
            self._heap = [(d, s, tp) for tp, (d, s, _) in self._held.items()]
            heapq.heapify(self._heap)
        return [record for _, _, record in dropped]

    def __len__(self) -> int:
        return len(self._held)

    def __repr__(self) -> str:
        return f"DelaySchedule(held={len(self._held)}, next_due_ms={self.next_due_ms()})"
