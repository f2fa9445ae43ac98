"""retry/headers.py: the header codec, its round trip and its bounds (invariant 6), and
the headers of a routed copy."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procpool_kafka.records import HandlerError, Headers, Record
from procpool_kafka.retry.headers import (
    H_ATTEMPT,
    H_ATTEMPTS,
    H_CONSUMER_GROUP,
    H_ERROR_MESSAGE,
    H_ERROR_TRACEBACK,
    H_ERROR_TYPE,
    H_FAILED_AT,
    H_FIRST_FAILURE,
    H_NOT_BEFORE,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    HEADER_PREFIX,
    TRUNCATION_MARKER,
    MalformedRetryHeaders,
    RetryInfo,
    copy_headers,
    dead_letter_headers,
    original_headers,
    read_retry_headers,
    retry_headers,
    truncate_utf8,
)
from procpool_kafka.retry.policy import Decision, RetryPolicy, Route

NOW = 1_700_000_000_000
OUR_HEADERS = (
    H_ATTEMPT,
    H_NOT_BEFORE,
    H_ORIGINAL_TOPIC,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_OFFSET,
    H_FIRST_FAILURE,
    H_ERROR_TYPE,
    H_ERROR_MESSAGE,
    H_ERROR_TRACEBACK,
    H_ATTEMPTS,
    H_CONSUMER_GROUP,
    H_FAILED_AT,
)


def header_dict(headers: Headers) -> dict[str, bytes]:
    return dict(headers)


header_names = st.one_of(
    st.sampled_from(OUR_HEADERS),
    st.text(max_size=20),
    st.text(max_size=10).map(lambda s: HEADER_PREFIX + s),
)
arbitrary_headers = st.lists(st.tuples(header_names, st.binary(max_size=40)), max_size=12)
ms = st.integers(0, 2**53)


@settings(max_examples=300)
@given(
    headers=arbitrary_headers,
    attempt=st.integers(2, 10**6),
    delay_ms=st.integers(0, 900_000),
    original=st.tuples(st.text(min_size=1, max_size=30), st.integers(0, 2**31), ms),
    first_failure=ms,
    error_type=st.text(max_size=60),
    error_message=st.text(max_size=300),
    max_bytes=st.integers(0, 200),
)
def test_retry_header_round_trip(
    *,
    headers: Headers,
    attempt: int,
    delay_ms: int,
    original: tuple[str, int, int],
    first_failure: int,
    error_type: str,
    error_message: str,
    max_bytes: int,
) -> None:
    out = retry_headers(
        headers,
        attempt=attempt,
        not_before_ms=NOW + delay_ms,
        original=original,
        first_failure_ms=first_failure,
        error_type=error_type,
        error_message=error_message,
        max_message_bytes=max_bytes,
    )
    user = [(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX)]
    assert out[: len(user)] == user, "user headers kept, in order, byte for byte, first"
    ours = out[len(user) :]
    assert all(k.startswith(HEADER_PREFIX) for k, _ in ours)
    counts = Counter(k for k, _ in ours)
    assert set(counts.values()) == {1}, "stale headers are replaced, not duplicated"
    assert H_ERROR_TRACEBACK not in counts
    assert original_headers(out) == user

    info = read_retry_headers(out, now_ms=NOW, max_delay=900)
    topic = original[0].encode("utf-8", "replace").decode("utf-8")
    assert info == RetryInfo(
        attempt, NOW + delay_ms, topic, original[1], original[2], first_failure
    )
    values = header_dict(out)
    assert len(values[H_ERROR_MESSAGE]) <= max_bytes
    assert values[H_ERROR_MESSAGE].decode("utf-8").rstrip(TRUNCATION_MARKER) in (
        error_message.encode("utf-8", "replace").decode("utf-8")
    )

    # a retry of the retry copy: still exactly one of each of our headers
    again = retry_headers(
        out,
        attempt=attempt + 1,
        not_before_ms=NOW,
        original=original,
        first_failure_ms=first_failure,
        error_type="x.Y",
        error_message="again",
        max_message_bytes=100,
    )
    assert original_headers(again) == user
    assert set(Counter(k for k, _ in again[len(user) :]).values()) == {1}
    assert read_retry_headers(again, NOW, 900).attempt == attempt + 1


@given(headers=arbitrary_headers, failed_at=ms, first=st.one_of(st.none(), ms))
def test_dead_letter_headers(headers: Headers, failed_at: int, first: int | None) -> None:
    out = dead_letter_headers(
        headers,
        attempts=5,
        original=("orders", 3, 42),
        first_failure_ms=first,
        error_type="mymod.MyError",
        error_message="boom é",
        traceback="Traceback (most recent call last):\n" + "  frame\n" * 2000,
        consumer_group="group-1",
        failed_at_ms=failed_at,
        max_message_bytes=1024,
        max_traceback_bytes=500,
    )
    user = [(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX)]
    assert original_headers(out) == user
    assert out[: len(user)] == user
    ours = out[len(user) :]
    assert Counter(k for k, _ in ours) == Counter(set(OUR_HEADERS) - {H_ATTEMPT, H_NOT_BEFORE}), (
        "each once; no attempt/not-before on a dead letter"
    )
    values = header_dict(ours)
    assert values[H_ATTEMPTS] == b"5"
    assert values[H_ORIGINAL_TOPIC] == b"orders"
    assert values[H_ORIGINAL_PARTITION] == b"3"
    assert values[H_ORIGINAL_OFFSET] == b"42"
    assert values[H_FIRST_FAILURE] == str(failed_at if first is None else first).encode()
    assert values[H_FAILED_AT] == str(failed_at).encode()
    assert values[H_CONSUMER_GROUP] == b"group-1"
    assert values[H_ERROR_TYPE] == b"mymod.MyError"
    assert values[H_ERROR_MESSAGE] == "boom é".encode()
    trace = values[H_ERROR_TRACEBACK]
    assert len(trace) <= 500
    assert trace.startswith(b"Traceback")
    assert trace.endswith(TRUNCATION_MARKER.encode())


def test_stale_headers_from_a_forged_record_are_replaced() -> None:
    headers: Headers = [
        ("trace-id", b"\xff\xfe not utf-8"),
        (H_ATTEMPT, b"1"),
        (H_NOT_BEFORE, b"99999999999999999"),
        (H_ERROR_TRACEBACK, b"old"),
        ("procpool.unknown-future-header", b"x"),
        ("trace-id", b"second"),
    ]
    out = retry_headers(
        headers,
        attempt=3,
        not_before_ms=NOW,
        original=("orders", 0, 7),
        first_failure_ms=NOW - 1,
        error_type="builtins.ValueError",
        error_message="bad",
        max_message_bytes=64,
    )
    assert out[:2] == [("trace-id", b"\xff\xfe not utf-8"), ("trace-id", b"second")]
    values = header_dict(out)
    assert values[H_ATTEMPT] == b"3"
    assert values[H_NOT_BEFORE] == str(NOW).encode()
    assert H_ERROR_TRACEBACK not in values
    assert "procpool.unknown-future-header" not in values


def test_far_future_not_before_is_clamped() -> None:
    def read(not_before: int) -> int:
        headers: Headers = [(H_ATTEMPT, b"2"), (H_NOT_BEFORE, str(not_before).encode())]
        return read_retry_headers(headers, NOW, max_delay=900, skew=5).not_before_ms

    assert read(NOW + 900_000) == NOW + 900_000
    assert read(NOW + 905_000) == NOW + 905_000, "within the allowed clock skew"
    assert read(NOW + 905_001) == NOW + 900_000
    assert read(10**31) == NOW + 900_000
    assert read(0) == 0, "a past not-before is simply due"


def test_read_retry_headers_optional_fields_are_lenient() -> None:
    headers: Headers = [
        (H_ATTEMPT, b"1"),
        (H_ATTEMPT, b"4"),  # last one counts, like Record.header
        (H_NOT_BEFORE, b"5"),
        (H_ORIGINAL_TOPIC, b"\xff"),
        (H_ORIGINAL_PARTITION, b"-1"),
        (H_ORIGINAL_OFFSET, b"x"),
    ]
    assert read_retry_headers(headers, NOW, 900) == RetryInfo(4, 5, None, None, None, None)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(H_NOT_BEFORE, b"1")], f"{H_ATTEMPT} is missing"),
        ([(H_ATTEMPT, b"2")], f"{H_NOT_BEFORE} is missing"),
        ([], "missing"),
        ([(H_ATTEMPT, b"two"), (H_NOT_BEFORE, b"1")], "not an ASCII decimal"),
        ([(H_ATTEMPT, b"2"), (H_NOT_BEFORE, b"1.5")], "not an ASCII decimal"),
        ([(H_ATTEMPT, b" 2"), (H_NOT_BEFORE, b"1")], "not an ASCII decimal"),
        ([(H_ATTEMPT, b"+2"), (H_NOT_BEFORE, b"1")], "not an ASCII decimal"),
        ([(H_ATTEMPT, b"0x2"), (H_NOT_BEFORE, b"1")], "not an ASCII decimal"),
        ([(H_ATTEMPT, b""), (H_NOT_BEFORE, b"1")], "empty"),
        ([(H_ATTEMPT, b"-2"), (H_NOT_BEFORE, b"1")], "negative"),
        ([(H_ATTEMPT, b"2"), (H_NOT_BEFORE, b"-1")], "negative"),
        ([(H_ATTEMPT, b"0"), (H_NOT_BEFORE, b"1")], "attempts start at 1"),
        ([(H_ATTEMPT, b"2"), (H_NOT_BEFORE, b"9" * 33)], "33 bytes long"),
        ([(H_ATTEMPT, b"1" * 10_000), (H_NOT_BEFORE, b"1")], "10000 bytes long"),
        ([(H_ATTEMPT, "٣".encode()), (H_NOT_BEFORE, b"1")], "not an ASCII decimal"),
        ([(H_ATTEMPT, b"2"), (H_NOT_BEFORE, "\uff11\uff12".encode())], "not an ASCII decimal"),
        ([(H_ATTEMPT, b"\xff\xfe"), (H_NOT_BEFORE, b"1")], "not an ASCII decimal"),
    ],
)
def test_malformed_retry_headers(headers: Headers, reason: str) -> None:
    with pytest.raises(MalformedRetryHeaders, match=reason):
        read_retry_headers(headers, NOW, max_delay=900)


def test_malformed_is_a_value_error() -> None:
    assert issubclass(MalformedRetryHeaders, ValueError)


def test_header_integers_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        retry_headers(
            [],
            attempt=2,
            not_before_ms=-5,
            original=("t", 0, 0),
            first_failure_ms=0,
            error_type="E",
            error_message="",
            max_message_bytes=10,
        )


# --------------------------------------------------------------------------- truncate_utf8


@settings(max_examples=500)
@given(text=st.text(), max_bytes=st.integers(0, 64))
def test_truncate_utf8_never_exceeds_nor_splits(text: str, max_bytes: int) -> None:
    out = truncate_utf8(text, max_bytes)
    assert len(out) <= max_bytes
    decoded = out.decode("utf-8")  # never a split character
    full = text.encode("utf-8", "replace").decode("utf-8")
    if len(full.encode()) <= max_bytes:
        assert decoded == full
    else:
        kept = decoded.removesuffix(TRUNCATION_MARKER) if max_bytes >= 3 else decoded
        assert decoded.endswith(TRUNCATION_MARKER) or max_bytes < 3
        assert full.startswith(kept)
        # as much as fits: the next character would not have
        room = max_bytes - (3 if max_bytes >= 3 else 0)
        assert len(kept.encode()) + len(full[len(kept)].encode()) > room


def test_truncate_utf8_examples() -> None:
    assert truncate_utf8("hello", 5) == b"hello"
    assert truncate_utf8("hello!", 5) == "he…".encode()
    assert truncate_utf8("ééé", 5) == "é…".encode()
    assert truncate_utf8("ééé", 4) == "…".encode(), "never half an 'é'"
    assert truncate_utf8("ééé", 6) == "ééé".encode()
    assert truncate_utf8("😀😀", 6) == "…".encode()
    assert truncate_utf8("😀😀", 7) == "😀…".encode()
    assert truncate_utf8("abc", 2) == b"ab"
    assert truncate_utf8("éa", 1) == b""
    assert truncate_utf8("x\udcff", 10) == b"x?", "lone surrogates cannot break encoding"
    with pytest.raises(ValueError, match="max_bytes"):
        truncate_utf8("x", -1)


# --------------------------------------------------------------------------- copy_headers

COPY_POLICY = RetryPolicy(
    topic="orders",
    retry_topics=("orders-retry",),
    dlq_topic="orders-dlq",
    max_error_message_bytes=8,
    max_traceback_bytes=16,
)
ERROR = HandlerError("mymod.MyError", "a long message", "Traceback: " + "x" * 100, ())
USER_HEADERS: Headers = [("trace-id", b"t1"), (H_ATTEMPT, b"stale")]


def copy_of(record: Record, decision: Decision, retry_info: RetryInfo | None) -> dict[str, bytes]:
    headers = copy_headers(
        record,
        ERROR,
        decision,
        retry_info,
        policy=COPY_POLICY,
        consumer_group="group-1",
        now_ms=NOW,
    )
    user = [(name, value) for name, value in record.headers if name == "trace-id"]
    assert original_headers(headers) == user, "user headers kept, ours replaced"
    return header_dict(headers)


def test_retry_copy_of_a_first_delivery_names_it_the_original() -> None:
    record = Record("orders", 3, 42, None, b"v", headers=USER_HEADERS)
    values = copy_of(record, Decision(Route.RETRY, "orders-retry", 2, NOW + 500), None)
    assert values[H_ATTEMPT] == b"2"
    assert values[H_NOT_BEFORE] == str(NOW + 500).encode()
    assert (values[H_ORIGINAL_TOPIC], values[H_ORIGINAL_PARTITION]) == (b"orders", b"3")
    assert values[H_ORIGINAL_OFFSET] == b"42"
    assert values[H_FIRST_FAILURE] == str(NOW).encode(), "this failure is the first"
    assert values[H_ERROR_TYPE] == b"mymod.MyError"
    assert values[H_ERROR_MESSAGE] == "a lon…".encode(), "cut to the policy's byte limit"
    assert H_ERROR_TRACEBACK not in values


def test_retry_copy_of_a_retry_copy_carries_the_first_delivery_over() -> None:
    record = Record("orders-retry", 0, 7, None, b"v", headers=USER_HEADERS, attempt=2)
    info = RetryInfo(2, NOW - 10, "orders", 3, 42, NOW - 1000)
    values = copy_of(record, Decision(Route.RETRY, "orders-retry", 3, NOW + 500), info)
    assert values[H_ATTEMPT] == b"3"
    assert values[H_ORIGINAL_TOPIC] == b"orders"
    assert (values[H_ORIGINAL_PARTITION], values[H_ORIGINAL_OFFSET]) == (b"3", b"42")
    assert values[H_FIRST_FAILURE] == str(NOW - 1000).encode()


def test_incomplete_original_coordinates_name_the_record_itself() -> None:
    record = Record("orders-retry", 0, 7, None, b"v", attempt=2)
    info = RetryInfo(2, NOW, "orders", None, 42, None)  # a partition header was undecodable
    values = copy_of(record, Decision(Route.RETRY, "orders-retry", 3, NOW), info)
    assert values[H_ORIGINAL_TOPIC] == b"orders-retry"
    assert (values[H_ORIGINAL_PARTITION], values[H_ORIGINAL_OFFSET]) == (b"0", b"7")
    assert values[H_FIRST_FAILURE] == str(NOW).encode()


def test_dead_letter_copy_says_who_gave_up_when_and_why() -> None:
    record = Record("orders-retry", 1, 9, None, b"v", headers=USER_HEADERS, attempt=5)
    info = RetryInfo(5, NOW - 10, "orders", 3, 42, NOW - 1000)
    values = copy_of(record, Decision(Route.DEAD_LETTER, "orders-dlq", 5, None), info)
    assert H_ATTEMPT not in values and H_NOT_BEFORE not in values
    assert values[H_ATTEMPTS] == b"5"
    assert values[H_CONSUMER_GROUP] == b"group-1"
    assert values[H_FAILED_AT] == str(NOW).encode()
    assert values[H_FIRST_FAILURE] == str(NOW - 1000).encode()
    assert (values[H_ORIGINAL_TOPIC], values[H_ORIGINAL_OFFSET]) == (b"orders", b"42")
    assert values[H_ERROR_TRACEBACK] == "Traceback: xx…".encode(), "cut to the policy's limit"

    first = Record("orders", 0, 1, None, b"v")
    values = copy_of(first, Decision(Route.DEAD_LETTER, "orders-dlq", 1, None), None)
    assert values[H_FIRST_FAILURE] == values[H_FAILED_AT] == str(NOW).encode()
    assert (values[H_ORIGINAL_TOPIC], values[H_ORIGINAL_OFFSET]) == (b"orders", b"1")
