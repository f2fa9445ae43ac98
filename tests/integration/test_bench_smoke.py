"""The side-by-side benchmark harness at tiny sizes, procpool-kafka only (no peer venvs).

It checks the harness, not performance: each scenario yields a result, nothing is lost and
the commits reach the end.
"""

from __future__ import annotations

import sys

import pytest

from benchmarks.side_by_side import Options, run_all

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_side_by_side_harness_at_tiny_sizes(kafka_bootstrap: str) -> None:
    options = Options(
        bootstrap=kafka_bootstrap,
        contenders=("procpool",),
        scenarios=("throughput", "retry", "memory"),
        costs=("50us",),
        messages=400,
        retry_messages=400,
        memory_messages=4_000,
        memory_value_bytes=200,
        memory_deadline_s=30.0,
        wait_quiet_s=0.0,
        retries=0,
        save=False,
        chart=False,
        pythons={"procpool": sys.executable},
    )
    document = run_all(options)

    [entry] = document["throughput"]
    run = entry["runs"]["procpool"]
    assert run["error"] is None, run
    assert run["handled"] == 400
    assert run["lost"] == 0
    assert run["first_to_last_rps"] and run["ratio_to_ideal"]

    retried = document["retry"]["runs"]["procpool"]
    assert retried["error"] is None, retried
    assert retried["lost"] == 0
    assert retried["distinct_handled"] == 400
    assert retried["failed_first_attempts"] == 40
    assert retried["all_done_s"] is not None

    drained = document["memory"]["runs"]["procpool"]
    assert drained["error"] is None, drained
    assert drained["handled"] == 4_000
    assert drained["rss_peak_bytes"] >= drained["rss_start_bytes"] > 0
    assert "| procpool-kafka |" in document["table_markdown"]
