"""retry/policy.py: backoff, policies and their validation, routing decisions."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from procpool_kafka.errors import ConfigError
from procpool_kafka.records import exception_type_names
from procpool_kafka.retry.policy import (
    Backoff,
    Decision,
    RetryPolicies,
    RetryPolicy,
    Route,
    decide,
)

NOW = 1_700_000_000_000
VALUE_ERROR_MRO = [
    "builtins.ValueError",
    "builtins.Exception",
    "builtins.BaseException",
]
MY_ERROR_MRO = ["mymod.MyError", *VALUE_ERROR_MRO]


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
    policies = RetryPolicies([policy])
    assert policies.for_base_topic("orders-retry-1m") is None
    assert policies.for_retry_topic("orders-retry-1m") is policy
    assert policies.for_consumed_topic("orders-retry-1m") is policy
    with pytest.raises(ConfigError, match="base topic of the retry policy for topic_pattern"):
        RetryPolicies([RetryPolicy(topic="a", retry_topics=("orders-x",)), policy])


def test_type_names_may_be_dotted_paths() -> None:
    policy = RetryPolicy(topic="a", non_retryable=("ValueError", "myapp.errors.Bad_Input2"))
    assert policy.non_retryable == ("ValueError", "myapp.errors.Bad_Input2")


# --------------------------------------------------------------------------- look-up by topic


def test_policies_look_up_the_first_match() -> None:
    specific = RetryPolicy(topic="orders.eu", retry_topics=("eu-retry",))
    general = RetryPolicy(topic_pattern=r"orders\..*", dlq_topic="dlq")
    policies = RetryPolicies([specific, general])
    assert policies.for_base_topic("orders.eu") is specific
    assert policies.for_base_topic("orders.us") is general
    assert policies.for_base_topic("payments") is None
    assert policies.for_retry_topic("eu-retry") is specific
    assert policies.for_retry_topic("orders.eu") is None, "a base topic is not a retry topic"


def test_overlapping_base_topics_go_to_the_first_configured_policy() -> None:
    """``orders.eu`` matches both policies: the order of the list decides, both ways."""
    specific = RetryPolicy(topic="orders.eu", retry_topics=("eu-retry",), dlq_topic="eu-dlq")
    general = RetryPolicy(topic_pattern=r"orders\..*", retry_topics=("all-retry",))
    specific_first = RetryPolicies([specific, general])
    general_first = RetryPolicies([general, specific])
    assert specific_first.for_base_topic("orders.eu") is specific
    assert general_first.for_base_topic("orders.eu") is general
    for policies in (specific_first, general_first):
        assert policies.for_base_topic("orders.us") is general
        # a retry topic belongs to the policy that lists it, whatever the order
        assert policies.for_retry_topic("eu-retry") is specific
        assert policies.for_retry_topic("all-retry") is general
        assert policies.for_consumed_topic("eu-retry") is specific
        assert policies.for_consumed_topic("all-retry") is general
        assert policies.for_consumed_topic("orders.us") is general
        assert policies.for_consumed_topic("eu-dlq") is None, "dead letters are not consumed"


def test_each_look_up_takes_its_kind_of_topic() -> None:
    orders = RetryPolicy(
        topic="orders", retry_topics=("orders-retry-1m", "orders-retry-1h"), dlq_topic="orders-dlq"
    )
    payments = RetryPolicy(topic="payments", dlq_topic="payments-dlq")
    policies = RetryPolicies([orders, payments])
    expected = {  # topic: (for_base_topic, for_retry_topic, for_consumed_topic)
        "orders": (orders, None, orders),
        "orders-retry-1m": (None, orders, orders),
        "orders-retry-1h": (None, orders, orders),
        "orders-dlq": (None, None, None),
        "payments": (payments, None, payments),
        "payments-dlq": (None, None, None),
        "unknown": (None, None, None),
    }
    for topic, (base, retry, consumed) in expected.items():
        assert policies.for_base_topic(topic) is base, topic
        assert policies.for_retry_topic(topic) is retry, topic
        assert policies.for_consumed_topic(topic) is consumed, topic
    assert list(policies) == [orders, payments]


def test_no_policies_find_nothing() -> None:
    policies = RetryPolicies()
    assert list(policies) == []
    for topic in ("orders", "orders-retry"):
        assert policies.for_base_topic(topic) is None
        assert policies.for_retry_topic(topic) is None
        assert policies.for_consumed_topic(topic) is None


def test_policies_are_checked_across_each_other() -> None:
    orders = RetryPolicy(topic="orders", retry_topics=("orders-retry",), dlq_topic="orders-dlq")
    RetryPolicies([orders, RetryPolicy(topic="payments", retry_topics=("payments-retry",))])
    with pytest.raises(ConfigError, match="orders-retry"):
        RetryPolicies([orders, RetryPolicy(topic="payments", retry_topics=("orders-retry",))])
    with pytest.raises(ConfigError, match="base topic"):
        RetryPolicies([orders, RetryPolicy(topic_pattern="orders-.*")])
    with pytest.raises(ConfigError, match="dlq_topic"):
        RetryPolicies([orders, RetryPolicy(topic="p", retry_topics=("orders-dlq",))])


def test_ambiguous_retry_and_dead_letter_topics_are_refused_naming_both_policies() -> None:
    orders = RetryPolicy(topic="orders", retry_topics=("shared",), dlq_topic="orders-dlq")
    both = "'shared' is used by both the retry policy for topic 'orders' and the retry policy"
    with pytest.raises(ConfigError, match=both) as shared:
        RetryPolicies([orders, RetryPolicy(topic="payments", retry_topics=("shared",))])
    assert shared.value.setting == "retry_topics"
    base = "'orders-dlq' is a base topic of the retry policy for topic 'orders-dlq'"
    with pytest.raises(ConfigError, match=base) as dead_letter:
        RetryPolicies([orders, RetryPolicy(topic="orders-dlq")])
    assert dead_letter.value.setting == "dlq_topic"
    # one policy listed twice owns its retry topics once
    assert RetryPolicies([orders, orders]).for_retry_topic("shared") is orders


TOPICS = ("a", "b", "a-r", "b-r", "a-d", "x")


@st.composite
def policy_lists(draw: st.DrawFn) -> list[RetryPolicy]:
    """Up to three policies over a few topic names, valid alone (together they may not be)."""
    policies = []
    for _ in range(draw(st.integers(0, 3))):
        pattern = draw(st.sampled_from([None, "a.*"]))
        with contextlib.suppress(ConfigError):  # e.g. a retry topic that is the topic itself
            policies.append(
                RetryPolicy(
                    topic=None if pattern else draw(st.sampled_from(TOPICS)),
                    topic_pattern=pattern,
                    retry_topics=tuple(draw(st.sets(st.sampled_from(TOPICS), max_size=2))),
                    dlq_topic=draw(st.sampled_from([None, *TOPICS])),
                )
            )
    return policies


@given(policy_lists())
def test_look_ups_agree_with_a_plain_scan_and_no_topic_is_of_two_kinds(
    policies: list[RetryPolicy],
) -> None:
    try:
        looked_up = RetryPolicies(policies)
    except ConfigError:
        return
    for topic in TOPICS:
        base = next((p for p in policies if p.matches(topic)), None)
        retry = next((p for p in policies if topic in p.retry_topics), None)
        assert looked_up.for_base_topic(topic) is base
        assert looked_up.for_retry_topic(topic) is retry
        assert base is None or retry is None, f"{topic} is a base and a retry topic"
        assert looked_up.for_consumed_topic(topic) is (retry or base)
    for policy in policies:
        if policy.dlq_topic is not None:
            assert looked_up.for_consumed_topic(policy.dlq_topic) is None


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
