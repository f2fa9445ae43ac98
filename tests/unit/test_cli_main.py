"""The command's signal handling (procpool_kafka.cli.main.SignalStopper) and the metrics
endpoint's health limit, without a broker."""

from __future__ import annotations

import signal
from typing import cast

from procpool_kafka.cli.main import SignalStopper
from procpool_kafka.cli.metrics import health_stale_after
from procpool_kafka.consumer import ProcPoolConsumer


class _Consumer:
    """Records the stop calls a ProcPoolConsumer would get."""

    def __init__(self) -> None:
        self.stops: list[bool] = []

    def stop(self, force: bool = False) -> None:
        self.stops.append(force)


def _stopper() -> tuple[SignalStopper, _Consumer]:
    consumer = _Consumer()
    return SignalStopper(cast(ProcPoolConsumer, consumer)), consumer


def test_the_first_signal_stops_gracefully_and_a_repeated_sigterm_changes_nothing() -> None:
    stopper, consumer = _stopper()
    stopper._handle(signal.SIGTERM, None)
    stopper._handle(signal.SIGTERM, None)
    assert consumer.stops == [False]
    assert not stopper.forced


def test_a_second_sigint_forces_the_stop() -> None:
    stopper, consumer = _stopper()
    stopper._handle(signal.SIGTERM, None)
    stopper._handle(signal.SIGINT, None)
    assert consumer.stops == [False, True]
    assert stopper.forced


def test_health_allows_more_than_a_drain_takes() -> None:
    assert health_stale_after(0.0) == 30.0
    assert health_stale_after(45.0) == 75.0
