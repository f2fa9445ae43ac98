"""Per-call seconds of the workload handler in this interpreter (for the peers on another Python).

    python -m benchmarks.peers.measure ITERATIONS [ITERATIONS ...]

Prints a JSON list: for each iteration count, the best of three series of about 0.4 s of
:func:`benchmarks.peers.workload.handle_value` calls, as the orchestrator times it in-process.
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks.peers.workload import Job, handle_value, make_value

SERIES_SECONDS = 0.4
REPEATS = 3


def per_call(iterations: int) -> float:
    """Best-of-three per-call seconds of the handler with ``iterations`` loop steps."""
    job = Job(iterations=iterations)
    value = make_value(0, 0, 100)
    started = time.perf_counter()
    handle_value(job, value, 0)
    probe = max(time.perf_counter() - started, 1e-7)
    calls = max(20, round(SERIES_SECONDS / probe))
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(calls):
            handle_value(job, value, 0)
        best = min(best, (time.perf_counter() - started) / calls)
    return best


if __name__ == "__main__":
    print(json.dumps([per_call(int(arg)) for arg in sys.argv[1:]]))
