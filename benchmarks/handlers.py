"""Handlers for the benchmarks: module-level, so worker processes import them by reference.

``busy_handler`` burns a calibrated amount of pure-Python CPU (integer arithmetic, no I/O, no
sleeping, no C extension doing the work with the GIL released): exactly the kind of handler
procpool-kafka exists for. Bind the iteration count with ``functools.partial``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by the peers' runners too, whose venvs lack procpool_kafka
    from procpool_kafka import Record

_MULTIPLIER = 1103515245
_INCREMENT = 12345
_MASK = 0x7FFFFFFF


def spin(iterations: int, seed: int) -> int:
    """A linear congruential generator stepped ``iterations`` times: pure interpreter work."""
    x = seed
    for _ in range(iterations):
        x = (x * _MULTIPLIER + _INCREMENT) & _MASK
    return x


def busy_handler(iterations: int, record: Record) -> None:
    """Spend about ``iterations`` LCG steps of CPU on ``record``; the result is discarded."""
    seed = record.offset ^ len(record.value or b"")
    spin(iterations, seed)


def calibrate(target_seconds: float, probe_seconds: float = 0.2) -> int:
    """The iteration count for which one ``spin`` costs about ``target_seconds`` here.

    Measures iterations per second over ``probe_seconds`` blocks (best of three, so a stray
    scheduler hiccup does not inflate the count's cost) and scales.
    """
    iterations = 10_000
    while True:  # grow the probe until one call takes a measurable while
        started = time.perf_counter()
        spin(iterations, 1)
        elapsed = time.perf_counter() - started
        if elapsed >= probe_seconds / 4:
            break
        iterations *= 2
    best = elapsed
    for _ in range(3):
        started = time.perf_counter()
        spin(iterations, 1)
        best = min(best, time.perf_counter() - started)
    per_second = iterations / best
    return max(1, round(target_seconds * per_second))


def spin_until(iterations: int, started: Any, stop: Any) -> None:
    """Run ``spin(iterations)`` calls until ``stop`` is set (a CPU hog for another core)."""
    started.set()
    while not stop.is_set():
        spin(iterations, 1)
