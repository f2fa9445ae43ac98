"""WorkerPool overhead: consumer-process CPU per record and throughput for a no-op handler.

    python benchmarks/pool_overhead.py [--records 20000] [--workers 2] [--batch 1 100]

Tasks are submitted as the consumer loop does: a bounded number in flight
(``--in-flight`` tasks), topped up after each collect(). The parent's CPU is
time.process_time() around the submit/collect loop (all of its threads).
"""

from __future__ import annotations

import argparse
import time

from procpool_kafka.pool import WorkerPool
from procpool_kafka.records import Record


def noop(record: Record) -> None:
    """The cheapest handler: measures the pool, not the work."""


def run(pool: WorkerPool, records: int, batch: int, in_flight: int) -> tuple[float, float]:
    """Return (parent CPU seconds, wall seconds) to handle ``records`` records."""
    template = [Record("bench", 0, offset, b"key", b"v" * 100) for offset in range(batch)]
    submitted = 0
    done = 0
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    while done < records:
        while submitted < records and pool.outstanding() < in_flight * batch:
            pool.submit(template)
            submitted += batch
        done += len(pool.collect(0.5))
    return time.process_time() - cpu_start, time.perf_counter() - wall_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--in-flight", type=int, default=8, help="tasks in flight")
    args = parser.parse_args()

    with WorkerPool(noop, args.workers) as pool:
        run(pool, 2_000, 10, args.in_flight)  # warm-up
        print(f"{args.workers} workers, {args.records} records, no-op handler")
        print(f"{'batch':>6} {'parent CPU us/record':>21} {'records/s':>10} {'wall s':>7}")
        for batch in args.batch:
            records = args.records - args.records % batch
            cpu, wall = run(pool, records, batch, args.in_flight)
            print(f"{batch:>6} {cpu / records * 1e6:>21.2f} {records / wall:>10.0f} {wall:>7.2f}")


if __name__ == "__main__":
    main()
