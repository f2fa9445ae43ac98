"""The markdown tables of a side-by-side result document (benchmarks/side_by_side.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

CONTENDERS = ("procpool", "arroyo", "plain", "retriable")
LABELS = {
    "procpool": "procpool-kafka",
    "arroyo": "sentry-arroyo",
    "plain": "confluent-kafka + ProcessPoolExecutor (by hand)",
    "retriable": "retriable-kafka-client",
}
RETRY_KIND = {
    "procpool": "retry topic",
    "retriable": "retry topic",
    "plain": "in memory",
    "arroyo": "none",
}
#: the memory scenario's target: consumer RSS growth over the backlog
RSS_GROWTH_TARGET_BYTES = 50e6

Row = Callable[[str, dict[str, Any]], Sequence[object]]


def num(value: float | None, digits: int = 0) -> str:
    """``value`` with thousands separators and ``digits`` decimals; "-" for None."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def mb(value: float | None) -> str:
    """Bytes as whole megabytes; "-" for None."""
    return "-" if value is None else f"{value / 1e6:,.0f}"


def table(
    title: str,
    about: str,
    *,
    columns: Sequence[str],
    runs: dict[str, dict[str, Any]],
    contenders: Sequence[str],
    row: Row,
) -> str:
    """A bold title, ``about`` in brackets, and a table with one row per contender that has a
    run; the first column is the contender's label, the others come from ``row(name, run)``;
    columns are right-aligned except the label and text columns (named with a trailing space
    in ``columns``)."""
    header = ["contender", *(c.strip() for c in columns)]
    aligns = ["---", *("---" if c.endswith(" ") else "---:" for c in columns)]
    lines = [f"**{title}** ({about})", _line(header), _line(aligns)]
    for name in contenders:
        run = runs.get(name)
        if run is not None:
            lines.append(_line([LABELS[name], *(str(cell) for cell in row(name, run))]))
    return "\n".join(lines) + "\n\n"


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _throughput(entry: dict[str, Any], contenders: Sequence[str]) -> str:
    title = f"Throughput, {entry['cost']} handler"
    about = (
        f"{entry['measured_cost_s'] * 1e6:,.0f} us measured, {entry['messages']:,} messages, "
        f"ideal {entry['ideal_rps']:,.0f} rec/s; target ratio >= {entry['target_ratio']:.2f}"
    )
    ceiling = entry.get("parallel_ceiling_rps")
    if ceiling:
        about += f"; {ceiling:,.0f} rec/s for bare processes running the handler at once"

    def row(name: str, r: dict[str, Any]) -> Sequence[object]:
        lost = r.get("lost")
        return (
            num(r.get("first_to_last_rps")),
            num(r.get("ratio_to_ideal"), 3),  # 3 digits: 0.965 must not read as 0.97
            num(r.get("ratio_to_parallel_ceiling"), 2),
            num(r.get("procpool_over_this"), 2),
            num(r.get("poll_to_committed_rps")),
            num(r.get("middle80_rps")),
            r.get("duplicates", "-"),
            "-" if lost is None else lost,
        )

    columns = (
        "first-to-last rec/s",
        "ratio to ideal",
        "ratio to bare processes",
        "procpool-kafka ÷ it",
        "poll-to-committed rec/s",
        "middle-80% rec/s",
        "duplicates",
        "lost",
    )
    return table(title, about, columns=columns, runs=entry["runs"], contenders=contenders, row=row)


def _retry(doc: dict[str, Any], contenders: Sequence[str]) -> str:
    title = "Retry"
    about = f"{doc['messages']:,} messages of ~0.5 ms, 10 % fail once, retry delay 1 s"

    def row(name: str, r: dict[str, Any]) -> Sequence[object]:
        polling, last = r.get("polling_s"), r.get("last_handled_s")
        handled_s = last - polling if last is not None and polling is not None else None
        lost = r["lost"] if r.get("all_done_s") is not None or r["lost"] else "0 (stopped)"
        return (
            RETRY_KIND[name],
            num(handled_s, 2),
            num(r.get("all_done_s"), 2),
            f"{r['distinct_handled']:,}",
            r["duplicates"],
            lost,
            r.get("error") or "; ".join(r.get("notes") or []),
        )

    columns = (
        "retries ",
        "first poll to all handled s",
        "to all committed s",
        "handled",
        "duplicates",
        "lost",
        "note ",
    )
    return table(title, about, columns=columns, runs=doc["runs"], contenders=contenders, row=row)


def _revoke(doc: dict[str, Any], contenders: Sequence[str]) -> str:
    title = "Revoke with a stuck handler"
    about = (
        f"{doc['messages']:,} messages of ~0.5 ms; message {doc['stuck_id']} sleeps forever "
        f"on member 1; revoke timeout {doc['revoke_timeout_s']:g} s; times from member 2's "
        "first poll"
    )

    def row(name: str, r: dict[str, Any]) -> Sequence[object]:
        stopped = r.get("member1_stop_s")
        return (
            num(r.get("rebalance_s"), 2),
            num(r.get("stuck_handled_s"), 2),
            f"{num(r.get('member2_handled_s'), 2)} (<= {r['target_s']:g})",
            num(r.get("member2_done_s"), 2),
            "yes" if r.get("stuck_partition_moved") else "no",
            r["duplicates"],
            r["lost"],
            f"exited in {stopped} s" if r.get("member1_exited") else f"killed after {stopped} s",
        )

    columns = (
        "member 2 assigned s",
        "stuck record handled s",
        "moved partitions all handled s (target)",
        "and committed s",
        "stuck partition moved ",
        "duplicates",
        "lost",
        "member 1 at stop ",
    )
    return table(title, about, columns=columns, runs=doc["runs"], contenders=contenders, row=row)


def _memory(doc: dict[str, Any], contenders: Sequence[str]) -> str:
    title = "Memory"
    about = (
        f"consumer-process RSS draining {doc['messages']:,} messages of {doc['value_bytes']:,} "
        f"B, ~5 us handler; at most {doc['deadline_s']:.0f} s each"
    )

    def row(name: str, r: dict[str, Any]) -> Sequence[object]:
        growth = r.get("rss_growth_bytes")
        met = None if growth is None else growth < RSS_GROWTH_TARGET_BYTES
        return (
            f"{int(r.get('handled') or 0):,}",
            num(r.get("drain_rps")),
            mb(r.get("rss_start_bytes")),
            mb(r.get("rss_peak_bytes")),
            mb(growth),
            "-" if met is None else ("met" if met else "missed"),
        )

    columns = (
        "handled",
        "rec/s",
        "RSS start MB",
        "RSS peak MB",
        "growth MB",
        f"target < {RSS_GROWTH_TARGET_BYTES / 1e6:.0f} MB ",
    )
    return table(title, about, columns=columns, runs=doc["runs"], contenders=contenders, row=row)


def markdown(document: dict[str, Any]) -> str:
    """Every scenario's table, in the order the scenarios ran."""
    contenders = [c for c in CONTENDERS if c in document["contenders"]]
    parts = [_throughput(entry, contenders) for entry in document.get("throughput", [])]
    for key, render in (("retry", _retry), ("revoke", _revoke), ("memory", _memory)):
        if document.get(key):
            parts.append(render(document[key], contenders))
    return "".join(parts)
