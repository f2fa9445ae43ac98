"""The side-by-side benchmark harness at tiny sizes, procpool-kafka only (no peer venvs).

It checks the harness, not performance: each scenario yields a result, nothing is lost and
the commits reach the end.
"""

from __future__ import annotations

import sys

import pytest

from benchmarks.side_by_side import Options, run_all

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_side_by_side_harness_at_tiny_sizes(kafka_bootstrap: str) -> None:
    options = Options(
        bootstrap=kafka_bootstrap,
        contenders=("procpool",),
        scenarios=("throughput", "retry", "revoke", "memory"),
        costs=("50us",),
        messages=400,
        retry_messages=400,
        memory_messages=4_000,
        memory_value_bytes=200,
        memory_deadline_s=30.0,
        wait_quiet_s=0.0,
        retries=0,
        rounds=2,
        revoke_per_partition=40,
        revoke_timeout_s=2.0,
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
    assert len(run["round_rps"]) == 2
    assert run["first_to_last_rps"] in run["round_rps"]

    retried = document["retry"]["runs"]["procpool"]
    assert retried["error"] is None, retried
    assert retried["lost"] == 0
    assert retried["distinct_handled"] == 400
    assert retried["failed_first_attempts"] == 40
    assert retried["all_done_s"] is not None

    revoked = document["revoke"]["runs"]["procpool"]
    assert revoked["stuck_partition_moved"], revoked
    assert revoked["lost"] == 0
    assert revoked["all_committed"]
    # the stuck record is handled by member 2 after member 1's revoke timeout
    assert revoked["member2_handled_s"] >= 2.0
    assert 2.0 <= revoked["stuck_handled_s"] <= revoked["member2_handled_s"]

    drained = document["memory"]["runs"]["procpool"]
    assert drained["error"] is None, drained
    assert drained["handled"] == 4_000
    assert drained["rss_peak_bytes"] >= drained["rss_start_bytes"] > 0
    assert "| procpool-kafka |" in document["table_markdown"]
