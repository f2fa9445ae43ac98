"""Retries and dead letters: what becomes of a record whose handler failed.

    failed record --policy--> decide(): RETRY (a retry tier, attempt + 1, not before t)
                                        DEAD_LETTER (the dead-letter topic) | DROP
                 --router---> copy produced (idempotent, acks=all); acknowledged -> done
    retry topic record --headers--> RetryInfo (attempt, not-before) --schedule--> held
                                    until due (its partition paused), then dispatched

- ``policy.py``: Backoff, RetryPolicy (validated on construction); RetryPolicies: the
  checks across policies and the look-up of a topic's policy; decide(): the routing of
  one failed attempt;
- ``headers.py``: the header codec: the ``procpool.*`` headers a retry or dead-letter copy
  carries (the table is in its docstring), written and read back;
- ``schedule.py``: DelaySchedule: retry copies read before their not-before time;
- ``router.py``: FailureRouter: produces the copies and reports each original as done once
  the broker acknowledged its copy.

Everything but ``router.py`` is pure (no Kafka import, no clock, no logging) and unit- and
property-tested; ``router.py`` is the only module here that imports confluent_kafka.

This package re-exports the names users need: :class:`Backoff`, :class:`RetryPolicy` and
the copies' header names (``HEADER_PREFIX``, ``H_*``, ``TRUNCATION_MARKER``).
"""

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
)
from procpool_kafka.retry.policy import Backoff, RetryPolicy

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
    "RetryPolicy",
]
