"""A plain confluent-kafka group member run as its own process by test_broker_group.

Appends one JSON line per event to OUT: {"assigned": [...]} after each rebalance and
{"partition": p, "offset": o} per message, committing each offset synchronously. Runs until
the file STOP exists, then closes (leaving the group).

    python -m tests.integration.group_member BOOTSTRAP GROUP TOPIC OUT STOP PROTOCOL

PROTOCOL is the group protocol, "classic" or "consumer" (KIP-848, whose timing is
the broker's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition


def main(bootstrap: str, group: str, topic: str, out: Path, stop: Path, *, protocol: str) -> None:
    timing = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "group.protocol": protocol,
            **(timing if protocol == "classic" else {}),
        }
    )
    assigned: set[int] = set()

    def write(event: dict[str, Any]) -> None:
        with out.open("a") as handle:
            handle.write(json.dumps(event) + "\n")

    def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # eager (classic range): everything was revoked first; consumer protocol: incremental
        assigned.update(tp.partition for tp in partitions)
        write({"assigned": sorted(assigned)})

    def on_revoke(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assigned.difference_update(tp.partition for tp in partitions)
        write({"assigned": sorted(assigned)})

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    try:
        while not stop.exists():
            for message in consumer.consume(100, timeout=0.2):
                partition, offset = message.partition(), message.offset()
                if message.error() is not None or partition is None or offset is None:
                    continue
                consumer.commit(
                    offsets=[TopicPartition(topic, partition, offset + 1)], asynchronous=False
                )
                write({"partition": partition, "offset": offset})
    finally:
        consumer.close()


if __name__ == "__main__":
    bootstrap, group, topic, out, stop, protocol = sys.argv[1:7]
    main(bootstrap, group, topic, Path(out), Path(stop), protocol=protocol)
