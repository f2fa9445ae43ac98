"""A chaos-run group member: a ProcPoolConsumer in its own process.

    python -m tests.chaos.member CONFIG_JSON STATUS_FILE

Writes its state (pid, assignment, paused partitions, worker pids) to STATUS_FILE about
every 0.5 s; SIGTERM stops it gracefully.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from procpool_kafka import ConsumerConfig, ProcPoolConsumer
from procpool_kafka.retry import Backoff, RetryPolicy
from tests.chaos.handler import handle
from tests.integration.runner import group_settings


def build_config(settings: dict[str, Any]) -> ConsumerConfig:
    topic = settings["topic"]
    policy = RetryPolicy(
        topic=topic,
        retry_topics=(f"{topic}-retry",),
        dlq_topic=f"{topic}-dlq",
        max_attempts=3,
        backoff=Backoff(initial_delay=0.5, multiplier=2.0, max_delay=5.0, jitter=0.1),
    )
    return ConsumerConfig(
        bootstrap_servers=settings["bootstrap"],
        group_id=settings["group"],
        topics=[topic],
        workers=2,
        retry=[policy],
        revoke_timeout=3.0,
        task_timeout=3.0,
        crash_limit=2,
        max_worker_rss_mb=400,
        commit_interval=0.5,
        **group_settings(settings.get("group_protocol", "classic")),
    )


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s [{os.getpid()}] %(name)s: %(message)s"
    )
    settings = json.loads(sys.argv[1])
    status = Path(sys.argv[2])
    consumer = ProcPoolConsumer(build_config(settings), handle)
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    done = threading.Event()

    def report() -> None:
        while not done.wait(0.5):
            state = {
                "pid": os.getpid(),
                "assignment": [list(tp) for tp in consumer.assignment()],
                "paused": [list(tp) for tp in consumer.paused()],
                "workers": consumer.worker_pids(),
            }
            tmp = status.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(status)

    threading.Thread(target=report, daemon=True).start()
    with consumer:
        summary = consumer.run()
    done.set()
    print(json.dumps({"summary": summary.describe()}), flush=True)


if __name__ == "__main__":
    main()
