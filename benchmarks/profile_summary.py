"""Summarise a py-spy profile written by ``python -m benchmarks.throughput --py-spy DIR``.

    python -m benchmarks.profile_summary DIR/throughput-50us.collapsed.txt [--thread NAME]

The profile samples the consumer process only while a thread holds the GIL (``py-spy --gil``),
so a thread's samples divided by the sampling rate are the seconds it ran Python code (or C
code called with the GIL held). Printed: GIL seconds per thread, and for one thread (default:
the consumer loop, ``procpool-run``) the share of its samples by

* procpool-kafka function: the deepest frame in procpool_kafka/ of each sample, so time in
  the standard library, confluent-kafka or pickling counts for the library function that
  called it;
* leaf function ("self" time), with file, without line numbers;
* inclusive function (a function counted once per sample however deep it recurs).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^thread \((?P<tid>\d+)\): (?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
LIBRARY_DIR = "procpool_kafka/"


@dataclass(frozen=True)
class Sample:
    thread: str
    frames: tuple[str, ...]  # "function (file)", outermost first
    count: int


def parse(path: Path) -> list[Sample]:
    samples = []
    for raw in path.read_text().splitlines():
        match = _LINE.match(raw.strip())
        if match is None:
            continue
        parts = match["stack"].split(";")
        thread, frames = parts[0], parts[1:]
        samples.append(Sample(thread, tuple(_strip_line(f) for f in frames), int(match["count"])))
    return samples


def _strip_line(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['func']} ({match['file']})"


def library_frame(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        if LIBRARY_DIR in frame:
            return frame
    return "(outside procpool_kafka)"


def top(counter: Counter[str], total: int, limit: int) -> list[str]:
    return [
        f"  {count / total:6.1%}  {count:6d}  {name}" for name, count in counter.most_common(limit)
    ]


def summarise(path: Path, thread: str, limit: int) -> str:
    samples = parse(path)
    meta_path = path.with_name(path.name.replace(".collapsed.txt", ".meta.json"))
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    rate = float(meta.get("rate_hz", 0)) or None
    sampled = meta.get("sampled_s")
    lines = [f"profile: {path}"]
    if meta:
        lines.append(
            f"rate {rate:g} Hz, sampled {sampled:.2f} s, launch to last handled "
            f"{meta.get('launch_to_last_s') or 0:.2f} s, {meta.get('messages')} messages"
        )
    per_thread: Counter[str] = Counter()
    for sample in samples:
        per_thread[sample.thread] += sample.count
    lines.append("GIL held, by thread (samples, seconds, share of the sampled wall time):")
    for name, count in per_thread.most_common():
        seconds = count / rate if rate else None
        share = f"{seconds / sampled:6.1%}" if seconds is not None and sampled else "     -"
        lines.append(f"  {count:6d}  {seconds or 0:6.2f} s  {share}  {name}")

    mine = [s for s in samples if s.thread == thread]
    total = sum(s.count for s in mine)
    if not total:
        lines.append(f"no samples of thread {thread!r}")
        return "\n".join(lines)
    by_library: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for sample in mine:
        by_library[library_frame(sample.frames)] += sample.count
        by_leaf[sample.frames[-1] if sample.frames else "?"] += sample.count
        for frame in set(sample.frames):
            inclusive[frame] += sample.count
    lines.append(f"\nthread {thread!r}: {total} samples")
    lines.append("by deepest procpool_kafka function:")
    lines += top(by_library, total, limit)
    lines.append("by leaf function (self):")
    lines += top(by_leaf, total, limit)
    lines.append("inclusive:")
    lines += top(inclusive, total, limit)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("profile", type=Path, help="a .collapsed.txt file")
    parser.add_argument("--thread", default="procpool-run", help="thread to break down")
    parser.add_argument("--limit", type=int, default=25, help="rows per table")
    args = parser.parse_args(argv)
    print(summarise(args.profile, args.thread, args.limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
