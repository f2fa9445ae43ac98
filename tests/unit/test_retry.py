"""Retry module: backoff, policies, routing, header codec, delay schedule (invariant 6)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procpool_kafka.errors import ConfigError
from procpool_kafka.records import Headers, Record, TopicPartition
from procpool_kafka.retry import (
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
    Backoff,
    Decision,
    DelaySchedule,
    MalformedRetryHeaders,
    RetryInfo,
    RetryPolicy,
    Route,
    dead_letter_headers,
    decide,
    exception_type_names,
    original_headers,
    policy_for,
    read_retry_headers,
    retry_headers,
    retry_policy_for,
    truncate_utf8,
    validate_policies,
)

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
VALUE_ERROR_MRO = [
    "builtins.ValueError",
    "builtins.Exception",
    "builtins.BaseException",
]
MY_ERROR_MRO = ["mymod.MyError", *VALUE_ERROR_MRO]


def header_dict(headers: Headers) -> dict[str, bytes]:
    return dict(headers)


# --------------------------------------------------------------------------- backoff


def test_backoff_sequence_doubles_from_15s_and_clamps_at_max() -> None:
    backoff = Backoff(jitter=0.0)
    delays = [backoff.delay(n) for n in range(1, 10)]
    assert delays == [15, 30, 60, 120, 240, 480, 900, 900, 900]


def test_backoff_huge_failure_count_does_not_overflow() -> None:
    assert Backoff(jitter=0.0).delay(10**6) == 900
    assert Backoff(initial_delay=1, multiplier=1000, max_delay=1e300, jitter=0).delay(10**4) == (
        1e300
    )


def test_backoff_constant_and_zero_delays() -> None:
    assert Backoff(initial_delay=5, multiplier=1, max_delay=5, jitter=0.5).base_delay(7) == 5
    zero = Backoff(initial_delay=0, multiplier=3, max_delay=0, jitter=0.5)
    assert zero.delay(4, random.Random(1)) == 0


def test_backoff_rejects_failures_below_one() -> None:
    with pytest.raises(ValueError, match="failures"):
        Backoff().delay(0)


@given(
    initial=st.floats(0, 1000),
    multiplier=st.floats(1, 10),
    extra=st.floats(0, 10_000),
    jitter=st.floats(0, 0.99),
    failures=st.integers(1, 200),
    seed=st.integers(0, 2**32),
)
def test_jitter_stays_within_bounds_and_under_max(
    *, initial: float, multiplier: float, extra: float, jitter: float, failures: int, seed: int
) -> None:
    backoff = Backoff(initial, multiplier, initial + extra, jitter)
    base = backoff.base_delay(failures)
    assert base <= backoff.max_delay
    delay = backoff.delay(failures, random.Random(seed))
    assert 0 <= delay <= backoff.max_delay
    assert base * (1 - jitter) * (1 - 1e-9) <= delay <= base * (1 + jitter) * (1 + 1e-9)
    assert delay == backoff.delay(failures, random.Random(seed)), "same rng, same delay"


def test_jitter_actually_spreads_delays() -> None:
    backoff = Backoff(initial_delay=100, max_delay=1000, jitter=0.5)
    rng = random.Random(7)
    delays = {backoff.delay(1, rng) for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) >= 50
    assert max(delays) <= 150


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_delay": -1}, "initial_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"initial_delay": 10, "max_delay": 5}, "max_delay"),
        ({"max_delay": float("inf")}, "max_delay"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"initial_delay": float("nan")}, "initial_delay"),
        ({"multiplier": "2"}, "multiplier"),
    ],
)
def test_backoff_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"backoff.{field}"):
        Backoff(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- policies


def test_retry_topic_tiers_per_attempt() -> None:
    policy = RetryPolicy(topic="orders", retry_topics=("r-15s", "r-1m", "r-10m"), max_attempts=9)
    assert [policy.retry_topic_for(a) for a in range(2, 8)] == [
        "r-15s",
        "r-1m",
        "r-10m",
        "r-10m",
        "r-10m",
        "r-10m",
    ]
    single = RetryPolicy(topic="orders", retry_topics=("orders-retry",))
    assert {single.retry_topic_for(a) for a in range(2, 20)} == {"orders-retry"}
    with pytest.raises(ValueError, match="attempt"):
        policy.retry_topic_for(1)
    with pytest.raises(ValueError, match="no retry_topics"):
        RetryPolicy(topic="orders").retry_topic_for(2)


def test_matches_exact_topic_and_fullmatch_pattern() -> None:
    exact = RetryPolicy(topic="orders")
    assert exact.matches("orders")
    assert not exact.matches("orders2")
    pattern = RetryPolicy(topic_pattern=r"orders\.[a-z]+")
    assert pattern.matches("orders.eu")
    assert not pattern.matches("orders.eu.retry"), "fullmatch, not search"
    assert not pattern.matches("x.orders.eu")


def test_policy_for_returns_first_match() -> None:
    specific = RetryPolicy(topic="orders.eu", retry_topics=("eu-retry",))
    general = RetryPolicy(topic_pattern=r"orders\..*", dlq_topic="dlq")
    policies = [specific, general]
    assert policy_for(policies, "orders.eu") is specific
    assert policy_for(policies, "orders.us") is general
    assert policy_for(policies, "payments") is None
    assert retry_policy_for(policies, "eu-retry") is specific
    assert retry_policy_for(policies, "orders.eu") is None, "a base topic is not a retry topic"


@pytest.mark.parametrize(
    ("non_retryable", "retryable", "types", "expected"),
    [
        ((), None, MY_ERROR_MRO, True),
        (("ValueError",), None, MY_ERROR_MRO, False),  # short name matches a base class
        (("builtins.ValueError",), None, MY_ERROR_MRO, False),  # dotted, exact
        (("mymod.MyError",), None, MY_ERROR_MRO, False),
        (("other.ValueError",), None, MY_ERROR_MRO, True),  # dotted must match exactly
        (("MyError",), None, VALUE_ERROR_MRO, True),
        (("Error",), None, MY_ERROR_MRO, True),  # last component, not a suffix
        ((), ("MyError",), MY_ERROR_MRO, True),
        ((), ("MyError",), VALUE_ERROR_MRO, False),  # allow-list excludes the rest
        ((), ("ValueError",), MY_ERROR_MRO, True),
        ((), (), MY_ERROR_MRO, False),  # an empty allow-list retries nothing
        (("MyError",), ("ValueError",), MY_ERROR_MRO, False),  # non_retryable wins
        (("MyError",), ("ValueError",), VALUE_ERROR_MRO, True),
        (("ValueError",), None, ["builtins.ValueError"], False),  # single name, no MRO
    ],
)
def test_is_retryable(
    non_retryable: tuple[str, ...],
    retryable: tuple[str, ...] | None,
    types: list[str],
    expected: bool,
) -> None:
    policy = RetryPolicy(topic="t", non_retryable=non_retryable, retryable=retryable)
    assert policy.is_retryable(types) is expected


def test_is_retryable_accepts_a_lone_string() -> None:
    policy = RetryPolicy(topic="t", non_retryable=("KeyError",))
    assert not policy.is_retryable("builtins.KeyError")
    assert policy.is_retryable("builtins.ValueError")


def test_exception_type_names_lists_the_mro_dotted() -> None:
    class Custom(KeyError):
        pass

    names = exception_type_names(Custom)
    assert names[0].endswith(".Custom")
    assert names[1:] == [
        "builtins.KeyError",
        "builtins.LookupError",
        "builtins.Exception",
        "builtins.BaseException",
    ]
    policy = RetryPolicy(topic="t", non_retryable=("LookupError",))
    assert not policy.is_retryable(names)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "topic_pattern"),
        ({"topic": "a", "topic_pattern": "a"}, "topic_pattern"),
        ({"topic": ""}, "topic"),
        ({"topic_pattern": "orders("}, "topic_pattern"),
        ({"topic": "a", "max_attempts": 0}, "max_attempts"),
        ({"topic": "a", "max_attempts": True}, "max_attempts"),
        ({"topic": "a", "retry_topics": ("a",)}, "retry_topics"),
        ({"topic": "a", "retry_topics": ("a,b",)}, "retry_topics: 'a,b' is not a valid topic"),
        ({"topic": "a b"}, "topic: 'a b' is not a valid topic name"),
        ({"topic": "a", "dlq_topic": "a/dlq"}, "dlq_topic: 'a/dlq' is not a valid"),
        ({"topic": "a", "non_retryable": ("not a type",)}, "non_retryable entries must be"),
        ({"topic": "a", "retryable": ("x.",)}, "retryable entries must be"),
        ({"topic": "a", "retry_topics": ("r", "r")}, "retry_topics"),
        ({"topic": "a", "retry_topics": ("r",), "dlq_topic": "r"}, "dlq_topic"),
        ({"topic": "a", "retry_topics": ("r", "")}, "retry_topics"),
        ({"topic": "a", "retry_topics": 5}, "retry_topics"),
        ({"topic": "a", "dlq_topic": "a"}, "dlq_topic"),
        ({"topic": "a", "dlq_topic": ""}, "dlq_topic"),
        ({"topic": "a", "non_retryable": (1,)}, "non_retryable"),
        ({"topic": "a", "retryable": [""]}, "retryable"),
        ({"topic": "a", "max_error_message_bytes": -1}, "max_error_message_bytes"),
        ({"topic": "a", "max_traceback_bytes": 1.5}, "max_traceback_bytes"),
        ({"topic": "a", "backoff": {"initial_delay": 1}}, "backoff"),
    ],
)
def test_policy_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_converts_lists_to_tuples() -> None:
    policy = RetryPolicy(
        topic="a",
        retry_topics=["r1", "r2"],  # type: ignore[arg-type]
        non_retryable=["KeyError"],  # type: ignore[arg-type]
        retryable=["ValueError"],  # type: ignore[arg-type]
    )
    assert policy.retry_topics == ("r1", "r2")
    assert policy.non_retryable == ("KeyError",)
    assert policy.retryable == ("ValueError",)
    lone = RetryPolicy(topic="a", retry_topics="a-retry")  # type: ignore[arg-type]
    assert lone.retry_topics == ("a-retry",), "a lone string is one topic, not its letters"
    hash(policy)  # frozen and hashable
    assert policy == RetryPolicy(
        topic="a", retry_topics=("r1", "r2"), non_retryable=("KeyError",), retryable=("ValueError",)
    )


def test_pattern_policy_never_matches_its_own_retry_and_dlq_topics() -> None:
    policy = RetryPolicy(
        topic_pattern=r"orders-.*",
        retry_topics=("orders-retry-1m", "orders-retry-10m"),
        dlq_topic="orders-dlq",
    )
    assert policy.matches("orders-eu")
    for own in ("orders-retry-1m", "orders-retry-10m", "orders-dlq"):
        assert not policy.matches(own)
    assert policy_for([policy], "orders-retry-1m") is None
    assert retry_policy_for([policy], "orders-retry-1m") is policy
    validate_policies([policy])
    with pytest.raises(ConfigError, match="base topic of the retry policy for topic_pattern"):
        validate_policies([RetryPolicy(topic="a", retry_topics=("orders-x",)), policy])


def test_type_names_may_be_dotted_paths() -> None:
    policy = RetryPolicy(topic="a", non_retryable=("ValueError", "myapp.errors.Bad_Input2"))
    assert policy.non_retryable == ("ValueError", "myapp.errors.Bad_Input2")


def test_validate_policies_across_policies() -> None:
    orders = RetryPolicy(topic="orders", retry_topics=("orders-retry",), dlq_topic="orders-dlq")
    validate_policies([orders, RetryPolicy(topic="payments", retry_topics=("payments-retry",))])
    with pytest.raises(ConfigError, match="orders-retry"):
        validate_policies([orders, RetryPolicy(topic="payments", retry_topics=("orders-retry",))])
    with pytest.raises(ConfigError, match="base topic"):
        validate_policies([orders, RetryPolicy(topic_pattern="orders-.*")])
    with pytest.raises(ConfigError, match="dlq_topic"):
        validate_policies([orders, RetryPolicy(topic="p", retry_topics=("orders-dlq",))])


# --------------------------------------------------------------------------- decide


POLICY = RetryPolicy(
    topic="orders",
    retry_topics=("r1", "r2"),
    max_attempts=4,
    backoff=Backoff(initial_delay=10, multiplier=3, max_delay=60, jitter=0),
    dlq_topic="dlq",
    non_retryable=("KeyError", "mymod.Fatal"),
)
NO_DLQ = RetryPolicy(topic="orders", retry_topics=("r1",), max_attempts=2, backoff=POLICY.backoff)
ALLOW = RetryPolicy(topic="orders", retry_topics=("r1",), dlq_topic="dlq", retryable=("MyError",))
NO_RETRIES = RetryPolicy(topic="orders", dlq_topic="dlq")


def dead(topic: str | None, attempts: int) -> Decision:
    return Decision(Route.DEAD_LETTER if topic else Route.DROP, topic, attempts, None)


def retry(topic: str, attempt: int, delay_ms: int | None) -> Decision:
    return Decision(Route.RETRY, topic, attempt, None if delay_ms is None else NOW + delay_ms)


KEY_ERROR_MRO = ["builtins.KeyError", "builtins.LookupError", "builtins.Exception"]


@pytest.mark.parametrize(
    ("policy", "attempt", "types", "expected"),
    [
        (POLICY, 1, VALUE_ERROR_MRO, retry("r1", 2, 10_000)),
        (POLICY, 2, VALUE_ERROR_MRO, retry("r2", 3, 30_000)),
        (POLICY, 3, VALUE_ERROR_MRO, retry("r2", 4, 60_000)),  # 90 s clamped to 60
        (POLICY, 4, VALUE_ERROR_MRO, dead("dlq", 4)),  # attempts exhausted
        (POLICY, 9, VALUE_ERROR_MRO, dead("dlq", 9)),
        (POLICY, 1, KEY_ERROR_MRO, dead("dlq", 1)),  # non-retryable, short name
        (POLICY, 1, ["mymod.Fatal", "builtins.Exception"], dead("dlq", 1)),  # dotted name
        (POLICY, 1, ["other.Fatal", "builtins.Exception"], retry("r1", 2, 10_000)),
        (POLICY, 2, ["mymod.Sub", *KEY_ERROR_MRO], dead("dlq", 2)),  # a base class in the MRO
        (ALLOW, 1, MY_ERROR_MRO, retry("r1", 2, None)),  # allow-listed
        (ALLOW, 1, VALUE_ERROR_MRO, dead("dlq", 1)),  # not allow-listed
        (NO_DLQ, 1, VALUE_ERROR_MRO, retry("r1", 2, 10_000)),
        (NO_DLQ, 2, VALUE_ERROR_MRO, dead(None, 2)),  # exhausted, no DLQ: drop
        (NO_RETRIES, 1, VALUE_ERROR_MRO, dead("dlq", 1)),
        (None, 1, VALUE_ERROR_MRO, dead(None, 1)),  # no policy: drop
        (None, 3, VALUE_ERROR_MRO, dead(None, 3)),
    ],
)
def test_decide_matrix(
    policy: RetryPolicy | None, attempt: int, types: list[str], expected: Decision
) -> None:
    decision = decide(policy, attempt, types, NOW, random.Random(0))
    if expected.route is Route.RETRY and expected.not_before_ms is None:
        # jittered default backoff: 15 s +- 10 %
        assert decision.not_before_ms is not None
        assert NOW + 13_500 <= decision.not_before_ms <= NOW + 16_500
        decision = Decision(decision.route, decision.topic, decision.attempt, None)
    assert decision == expected


def test_decide_max_attempts_one_never_retries() -> None:
    policy = RetryPolicy(topic="t", retry_topics=("r",), max_attempts=1, dlq_topic="d")
    assert decide(policy, 1, VALUE_ERROR_MRO, NOW).route is Route.DEAD_LETTER


def test_decide_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt"):
        decide(POLICY, 0, VALUE_ERROR_MRO, NOW)


@given(attempt=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_decide_retry_delay_follows_backoff(attempt: int, seed: int) -> None:
    policy = RetryPolicy(topic="t", retry_topics=("a", "b", "c"), max_attempts=100)
    decision = decide(policy, attempt, VALUE_ERROR_MRO, NOW, random.Random(seed))
    assert decision.route is Route.RETRY
    assert decision.attempt == attempt + 1
    assert decision.topic == policy.retry_topic_for(attempt + 1)
    expected = policy.backoff.delay(attempt, random.Random(seed))
    assert decision.not_before_ms is not None
    assert 0 <= decision.not_before_ms - NOW - expected * 1000 < 1


# --------------------------------------------------------------------------- header codec

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


# --------------------------------------------------------------------------- delay schedule


def rec(topic: str, partition: int, offset: int) -> Record:
    return Record(topic, partition, offset, None, b"v", attempt=2)


def test_delay_schedule_pops_due_records_earliest_first() -> None:
    schedule = DelaySchedule()
    a, b, c = rec("r", 0, 1), rec("r", 1, 5), rec("r2", 0, 9)
    schedule.hold(a.topic_partition, a, 300)
    schedule.hold(b.topic_partition, b, 100)
    schedule.hold(c.topic_partition, c, 200)
    assert len(schedule) == 3
    assert schedule.next_due_ms() == 100
    assert schedule.pop_due(99) == []
    assert schedule.pop_due(200) == [b, c]
    assert not schedule.holding(b.topic_partition)
    assert schedule.holding(a.topic_partition)
    assert schedule.next_due_ms() == 300
    assert schedule.pop_due(10**15) == [a]
    assert schedule.next_due_ms() is None
    assert len(schedule) == 0


def test_delay_schedule_ties_keep_hold_order() -> None:
    schedule = DelaySchedule()
    records = [rec("r", p, 0) for p in range(5)]
    for record in records:
        schedule.hold(record.topic_partition, record, 50)
    assert schedule.pop_due(50) == records


def test_delay_schedule_holds_one_per_partition() -> None:
    schedule = DelaySchedule()
    first, second = rec("r", 0, 1), rec("r", 0, 2)
    schedule.hold(TopicPartition("r", 0), first, 10)
    with pytest.raises(ValueError, match="already holds"):
        schedule.hold(TopicPartition("r", 0), second, 5)
    with pytest.raises(ValueError, match="not a record of"):
        schedule.hold(TopicPartition("r", 1), second, 5)
    assert schedule.pop_due(10) == [first]
    schedule.hold(TopicPartition("r", 0), second, 20)  # free again once popped
    assert schedule.partitions() == {TopicPartition("r", 0)}


def test_delay_schedule_drop() -> None:
    schedule = DelaySchedule()
    a, b, c = rec("r", 0, 1), rec("r", 1, 1), rec("r", 2, 1)
    schedule.hold(a.topic_partition, a, 30)
    schedule.hold(b.topic_partition, b, 10)
    schedule.hold(c.topic_partition, c, 20)
    dropped = schedule.drop([a.topic_partition, b.topic_partition, TopicPartition("x", 0)])
    assert dropped == [b, a]
    assert len(schedule) == 1
    assert schedule.next_due_ms() == 20
    assert schedule.drop([]) == []
    # a dropped partition can hold again, with a fresh due time
    schedule.hold(b.topic_partition, b, 40)
    assert schedule.pop_due(35) == [c]
    assert schedule.pop_due(40) == [b]


@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["hold", "pop", "drop"]),
            st.integers(0, 5),
            st.integers(0, 1000),
        ),
        max_size=60,
    )
)
def test_delay_schedule_matches_a_simple_model(ops: list[tuple[str, int, int]]) -> None:
    schedule = DelaySchedule()
    model: dict[TopicPartition, tuple[int, int, Record]] = {}
    seq = 0
    for op, partition, number in ops:
        tp = TopicPartition("r", partition)
        if op == "hold":
            record = rec("r", partition, number)
            if tp in model:
                with pytest.raises(ValueError):
                    schedule.hold(tp, record, number)
            else:
                seq += 1
                schedule.hold(tp, record, number)
                model[tp] = (number, seq, record)
        elif op == "pop":
            due = sorted((d, s, tp_) for tp_, (d, s, _) in model.items() if d <= number)
            expected = [model.pop(tp_)[2] for _, _, tp_ in due]
            assert schedule.pop_due(number) == expected
        else:
            expected_dropped = [model.pop(tp)[2]] if tp in model else []
            assert schedule.drop([tp]) == expected_dropped
        assert len(schedule) == len(model)
        assert schedule.next_due_ms() == min((d for d, _, _ in model.values()), default=None)
        assert all(schedule.holding(tp_) for tp_ in model)
