"""Fill a topic with Mandelbrot tile jobs for the demo (scripts/demo).

About 1% of the jobs fail on their first attempt (they succeed when retried) and one job is
poison (it always fails and ends in the dead-letter topic).

    python -m examples.produce_jobs --bootstrap 127.0.0.1:9092 --topic jobs --count 2000
"""

from __future__ import annotations

import argparse
import json

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

TILES = 48


def jobs(count: int) -> list[dict[str, object]]:
    """``count`` tile jobs walking the tile grid; every 100th transient, the 7th poison."""
    result: list[dict[str, object]] = []
    for index in range(count):
        cell = index % (TILES * TILES)
        job: dict[str, object] = {"tile": [cell % TILES, cell // TILES], "tiles": TILES}
        if index % 100 == 50:
            job["fail_until_attempt"] = 2
        if index == 7:
            job["poison"] = True
        result.append(job)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    futures = admin.create_topics([NewTopic(args.topic, args.partitions, 1)])
    futures[args.topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 20})
    for index, job in enumerate(jobs(args.count)):
        while True:
            try:
                producer.produce(args.topic, key=str(index).encode(), value=json.dumps(job))
                break
            except BufferError:
                producer.poll(0.1)
    remaining = producer.flush(60)
    if remaining:
        raise SystemExit(f"{remaining} jobs were not delivered")
    print(f"produced {args.count} jobs to {args.topic} ({args.partitions} partitions)")


if __name__ == "__main__":
    main()
