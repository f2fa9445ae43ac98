"""What a run reports (procpool_kafka.cli.progress): progress lines and the summary line."""

from __future__ import annotations

import io
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from procpool_kafka.cli.progress import (
    BAR_WIDTH,
    ProgressReporter,
    format_progress,
    format_summary,
)
from procpool_kafka.metrics import EndCommit, RunSummary, format_rate


def test_progress_line() -> None:
    line = format_progress(50, 200, 10.0, bar=False)
    assert line == "progress: 50/200 records (25%) 5 records/s ETA 30s"
    assert format_progress(200, 200, 2.0, bar=True).startswith("[" + "#" * 30 + "]")


def test_progress_before_any_record_and_of_an_empty_run() -> None:
    assert format_progress(0, 10, 0.0, bar=False) == (
        "progress: 0/10 records (0%) 0 records/s ETA -"
    )
    assert format_progress(0, 0, 1.0, bar=False) == "progress: 0/0 records (100%) 0 records/s ETA -"


@given(
    done=st.integers(min_value=0, max_value=10**9),
    total=st.integers(min_value=0, max_value=10**9),
    elapsed=st.floats(min_value=0.0, max_value=1e6),
)
def test_progress_bar_keeps_its_width_and_never_shows_more_than_the_total(
    done: int, total: int, elapsed: float
) -> None:
    line = format_progress(done, total, elapsed, bar=True)
    bar, _, text = line.partition("] ")
    assert len(bar) == 1 + BAR_WIDTH
    assert set(bar[1:]) <= {"#", "."}
    assert text.startswith(f"{min(done, total)}/{total} records (")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_reporter_writes_a_final_line_when_stopped() -> None:
    stream = io.StringIO()
    reporter = ProgressReporter(lambda: (3, 4), interval=3600.0, stream=stream)
    reporter.start()
    reporter.stop()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("progress: 3/4 records (75%) ")


def test_reporter_on_a_terminal_redraws_one_bar_and_ends_the_line() -> None:
    terminal = _Terminal()
    ProgressReporter(lambda: (4, 4), interval=3600.0, stream=terminal).stop()
    written = terminal.getvalue()
    assert written.startswith("\r[" + "#" * BAR_WIDTH + "] 4/4 records (100%) ")
    assert written.endswith("\n")


def test_reporter_writes_nothing_while_the_total_is_unknown() -> None:
    stream = io.StringIO()
    ProgressReporter(lambda: None, interval=3600.0, stream=stream).stop()
    assert stream.getvalue() == ""


def test_summary_rate_keeps_the_digits_that_matter() -> None:
    assert format_rate(8 / 36) == "0.22", "8 records in 36 s"
    assert format_rate(12.34) == "12.3"
    assert format_rate(1234.5) == "1234"
    assert format_rate(0.0) == "0"


SUMMARY = RunSummary(
    records_ok=153,
    records_failed=5,
    records_retried=4,
    records_dead_lettered=1,
    duration_s=2.345,
    records_per_s=67.4,
    worker_crashes=0,
)


def test_summary_line_of_a_run_without_an_end() -> None:
    assert format_summary(SUMMARY) == (
        "summary: ok=153 retried=4 dead-lettered=1 failed-attempts=5 worker-crashes=0 "
        "duration=2.3s rate=67.4 records/s"
    )


def test_summary_line_of_a_batch_run_counts_partitions_committed_to_the_end() -> None:
    complete = replace(SUMMARY, end_commit=EndCommit(partitions=3))
    assert format_summary(complete).endswith(" records/s committed=3/3")
    short = EndCommit(partitions=3, short=("t[1] committed 5 of 9",))
    assert format_summary(replace(SUMMARY, end_commit=short)).endswith(" committed=2/3")
