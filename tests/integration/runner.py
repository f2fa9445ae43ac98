"""Run a ProcPoolConsumer in a thread (in-process) or in its own process, for tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procpool_kafka import ConsumerConfig, ProcPoolConsumer, Record, RunSummary
from tests.kafka_helpers import unique_name

REPO = Path(__file__).resolve().parents[2]

#: group settings that make joins, leaves and evictions take seconds, not tens of seconds
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def group_settings(group_protocol: str) -> dict[str, Any]:
    """ConsumerConfig fields for fast rebalances: the classic protocol takes its timing from
    the client (FAST_GROUP); the consumer protocol from the broker (scripts/kafka-local)."""
    fast = dict(FAST_GROUP) if group_protocol == "classic" else {}
    return {"group_protocol": group_protocol, "kafka_config": fast}


def consumer_config(
    bootstrap: str, topics: list[str], group_protocol: str = "classic", **overrides: Any
) -> ConsumerConfig:
    """A ConsumerConfig for tests: its own group, 2 workers, fast commits and rebalances."""
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": unique_name("g"),
        "topics": topics,
        "workers": 2,
        "commit_interval": 0.2,
        **group_settings(group_protocol),
    }
    settings.update(overrides)
    return ConsumerConfig(**settings)


class ThreadedConsumer:
    """A consumer opened in the test thread and run in a background thread."""

    def __init__(self, config: ConsumerConfig, handler: Callable[[Record], object]) -> None:
        self.consumer = ProcPoolConsumer(config, handler)
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ThreadedConsumer:
        self.consumer.open()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.summary = self.consumer.run()
        except BaseException as error:
            self.error = error
            raise

    def stop(self, timeout: float = 60.0) -> RunSummary:
        self.consumer.stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "run() did not return after stop()"
        self.consumer.close()
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary

    def __enter__(self) -> ThreadedConsumer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()
        else:
            self.consumer.close()


def spawn_consumer_process(
    config: dict[str, Any], store: Path, log_file: Path
) -> subprocess.Popen[bytes]:
    """Start ``python -m tests.integration.runner`` with a JSON config; SIGTERM stops it.

    ``config`` holds ConsumerConfig fields; ``retry`` a list of RetryPolicy keyword dicts
    (lists for tuples); ``_log_level`` the log level (default INFO).
    """
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.runner", json.dumps(config), str(store)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _main() -> None:
    """Consumer process: run the scripted handler until SIGTERM."""
    import functools
    import logging

    from procpool_kafka.retry import RetryPolicy
    from tests.integration.handlers import scripted

    settings = json.loads(sys.argv[1])
    level = settings.pop("_log_level", "INFO")  # DEBUG: pauses and held records are logged
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    settings["retry"] = [RetryPolicy(**policy) for policy in settings.get("retry", [])]
    config = ConsumerConfig(**settings)
    consumer = ProcPoolConsumer(config, functools.partial(scripted, sys.argv[2]))
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    with consumer:
        summary = consumer.run()
    print(json.dumps({"summary": summary.describe()}), flush=True)


if __name__ == "__main__":
    _main()
