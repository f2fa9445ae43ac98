"""The retry header codec: what a retry or dead-letter copy says about itself.

:func:`retry_headers` and :func:`dead_letter_headers` build the headers of a copy
(:func:`copy_headers` picks one for a routing decision and carries the first delivery over),
:func:`read_retry_headers` decodes what a retry copy says about itself (:class:`RetryInfo`,
or :class:`MalformedRetryHeaders`), :func:`original_headers` strips ours and
:func:`truncate_utf8` bounds the text headers. Pure: no Kafka import, no clock.

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

import math
from dataclasses import dataclass

from procpool_kafka.records import HandlerError, Headers, Record, record_id
from procpool_kafka.retry.policy import Decision, RetryPolicy, Route

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
    "MalformedRetryHeaders",
    "RetryInfo",
    "copy_headers",
    "dead_letter_headers",
    "original_headers",
    "read_retry_headers",
    "retry_headers",
    "truncate_utf8",
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def copy_headers(
    record: Record,
    error: HandlerError,
    decision: Decision,
    retry_info: RetryInfo | None,
    *,
    policy: RetryPolicy,
    consumer_group: str,
    now_ms: int,
) -> Headers:
    """Headers of the copy of failed ``record`` that ``decision`` sends (RETRY or DEAD_LETTER).

    A record read from a retry topic carries the first delivery's coordinates (when its
    headers name all three) and first failure time over from ``retry_info``; otherwise
    ``record`` is the first delivery and this failure (``now_ms``) the first one.
    """
    original = record_id(record)
    first_failure: int | None = None
    if retry_info is not None:
        if (
            retry_info.original_topic is not None
            and retry_info.original_partition is not None
            and retry_info.original_offset is not None
        ):
            original = (
                retry_info.original_topic,
                retry_info.original_partition,
                retry_info.original_offset,
            )
        first_failure = retry_info.first_failure_ms
    if decision.route is Route.RETRY:
        return retry_headers(
            record.headers,
            attempt=decision.attempt,
            not_before_ms=decision.not_before_ms or now_ms,
            original=original,
            first_failure_ms=now_ms if first_failure is None else first_failure,
            error_type=error.type_name,
            error_message=error.message,
            max_message_bytes=policy.max_error_message_bytes,
        )
    return dead_letter_headers(
        record.headers,
        attempts=decision.attempt,
        original=original,
        first_failure_ms=first_failure,
        error_type=error.type_name,
        error_message=error.message,
        traceback=error.traceback,
        consumer_group=consumer_group,
        failed_at_ms=now_ms,
        max_message_bytes=policy.max_error_message_bytes,
        max_traceback_bytes=policy.max_traceback_bytes,
    )
