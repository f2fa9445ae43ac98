"""Retry policies: backoff, which retry tier or dead-letter topic a failed record goes to.

This module owns the decisions about a failed record, none of the producing:

- :class:`Backoff` and :class:`RetryPolicy`: how long to wait after a failure,
  which retry topic (delay tier) a copy goes to, when to give up, and which
  exception types are worth retrying at all; each validated on construction
  (:class:`~procpool_kafka.errors.ConfigError` naming the field);
- :class:`RetryPolicies`: the configured policies, checked against each other, and
  the look-up of a topic's policy (``for_base_topic``, ``for_retry_topic``,
  ``for_consumed_topic``);
- :func:`decide`: the routing decision for one failed attempt
  (:attr:`Route.RETRY`, :attr:`Route.DEAD_LETTER` or :attr:`Route.DROP`).

It is pure (no Kafka import, no clock, no logging): the caller passes the time.
"""

from __future__ import annotations

import enum
import math
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from procpool_kafka.errors import ConfigError
from procpool_kafka.topic_names import require_topic_name

__all__ = [
    "Backoff",
    "Decision",
    "RetryPolicies",
    "RetryPolicy",
    "Route",
    "decide",
]

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

        Called by ``__post_init__``; the checks across policies are :class:`RetryPolicies`'s.
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


class RetryPolicies:
    """The configured retry policies, checked against each other, looked up by topic.

    A consumed topic is a base topic (matched by a policy's ``topic`` or
    ``topic_pattern``) or a retry topic (listed in a policy's ``retry_topics``); each
    look-up says which kind it takes. When several policies match a base topic (an exact
    ``topic`` and a ``topic_pattern``, say) the first configured one wins.

    Construction raises ConfigError (naming both policies) when a retry or dead-letter
    topic of one policy is a base topic of any policy, or a retry topic of another: so no
    topic is of both kinds and every retry topic has one owner.
    """

    def __init__(self, policies: Iterable[RetryPolicy] = ()) -> None:
        self._policies = tuple(policies)
        self._retry_topic_owners = _retry_topic_owners(self._policies)
        _check_copy_topics(self._policies, self._retry_topic_owners)

    def __iter__(self) -> Iterator[RetryPolicy]:
        return iter(self._policies)

    def __repr__(self) -> str:
        return f"RetryPolicies({list(self._policies)!r})"

    def for_base_topic(self, topic: str) -> RetryPolicy | None:
        """The first policy whose ``topic`` or ``topic_pattern`` matches ``topic``, or None."""
        for policy in self._policies:
            if policy.matches(topic):
                return policy
        return None

    def for_retry_topic(self, topic: str) -> RetryPolicy | None:
        """The policy that lists ``topic`` among its ``retry_topics``, or None.

        Only records from such a topic may have their retry headers read (invariant 6).
        """
        return self._retry_topic_owners.get(topic)

    def for_consumed_topic(self, topic: str) -> RetryPolicy | None:
        """The policy of a record read from ``topic``: the owner of a retry topic, else the
        policy of a base topic, else None."""
        return self.for_retry_topic(topic) or self.for_base_topic(topic)


def _retry_topic_owners(policies: Sequence[RetryPolicy]) -> dict[str, RetryPolicy]:
    """Each retry topic's policy; ConfigError when two policies list the same one."""
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
    return owners


def _check_copy_topics(
    policies: Sequence[RetryPolicy], retry_topic_owners: dict[str, RetryPolicy]
) -> None:
    """ConfigError when a retry or dead-letter topic is a base topic of any policy, or a
    dead-letter topic is a retry topic of another policy."""
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
        owner = retry_topic_owners.get(policy.dlq_topic) if policy.dlq_topic else None
        if owner is not None:
            problem = f"{policy.dlq_topic!r} is a retry topic of the {owner.name}"
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
