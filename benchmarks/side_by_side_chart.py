"""The PNG chart of a side-by-side results file (run in the benchmark-only ``chart`` venv).

    python -m benchmarks.side_by_side_chart RESULTS.json OUT.png

Panels: throughput per handler cost (records/s, first handled to last handled, with the
ideal as a dashed line), the retry scenario (seconds until everything was handled and
committed), the stuck-handler revoke (seconds until the new member was assigned and until it
had committed its partitions), and the consumer-process RSS while draining the backlog.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = ("procpool", "arroyo", "plain", "retriable")
NAMES = {
    "procpool": "procpool-kafka",
    "arroyo": "sentry-arroyo",
    "plain": "by hand",
    "retriable": "retriable",
}
COLORS = {"procpool": "#1f77b4", "arroyo": "#ff7f0e", "plain": "#2ca02c", "retriable": "#d62728"}


def _bars(ax: Any, labels: list[str], values: list[float | None], colors: list[str]) -> None:
    heights = [v or 0.0 for v in values]
    bars = ax.bar(labels, heights, color=colors)
    for bar, value in zip(bars, values, strict=True):
        text = "n/a" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.tick_params(axis="x", labelsize=8)


def draw(document: dict[str, Any], out: Path) -> None:
    throughput = document.get("throughput", [])
    panels = len(throughput) + sum(1 for key in ("retry", "revoke", "memory") if key in document)
    columns = 3
    rows = max(1, (panels + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(15, 4.6 * rows), squeeze=False)
    flat = list(axes.flat)
    index = 0
    for entry in throughput:
        ax = flat[index]
        index += 1
        runs = entry["runs"]
        names = [n for n in ORDER if n in runs]
        values = [runs[n].get("first_to_last_rps") for n in names]
        _bars(ax, [NAMES[n] for n in names], values, [COLORS[n] for n in names])
        ax.axhline(entry["ideal_rps"], linestyle="--", color="black", linewidth=1)
        ax.annotate(
            f"ideal {entry['ideal_rps']:,.0f}/s",
            (0.99, entry["ideal_rps"]),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=8,
        )
        ax.set_ylim(0, entry["ideal_rps"] * 1.15)
        ax.set_title(
            f"Throughput, {entry['cost']} handler ({entry['messages']:,} msgs)", fontsize=10
        )
        ax.set_ylabel("records/s (first to last handled)")
    if "retry" in document:
        ax = flat[index]
        index += 1
        runs = document["retry"]["runs"]
        names = [n for n in ORDER if n in runs]
        values = [runs[n].get("all_done_s") for n in names]
        _bars(ax, [NAMES[n] for n in names], values, [COLORS[n] for n in names])
        ax.set_title(
            f"Retry: 10% fail once, 1 s delay ({document['retry']['messages']:,} msgs)\n"
            "n/a: no retry support",
            fontsize=10,
        )
        ax.set_ylabel("s, first poll to all handled + committed")
    if "revoke" in document:
        ax = flat[index]
        index += 1
        revoke = document["revoke"]
        runs = revoke["runs"]
        names = [n for n in ORDER if n in runs]
        width = 0.27
        positions = list(range(len(names)))
        bars = (
            ("rebalance_s", "member 2 assigned"),
            ("member2_handled_s", "moved partitions all handled"),
            ("member2_done_s", "... and committed"),
        )
        for shift, (key, label) in zip((-width, 0.0, width), bars, strict=True):
            measured = [runs[n].get(key) for n in names]
            values = [value or 0.0 for value in measured]
            xs = [p + shift for p in positions]
            ax.bar(xs, values, width, label=label)
            for x, value in zip(xs, measured, strict=True):
                text = "never" if value is None else f"{value:.1f}"
                ax.annotate(text, (x, value or 0.0), ha="center", va="bottom", fontsize=7)
        ax.axhline(revoke["revoke_timeout_s"] + 1, linestyle="--", color="black", linewidth=1)
        ax.set_xticks(positions, [NAMES[n] for n in names], fontsize=8)
        ax.set_title(
            f"Revoke with a stuck handler (revoke timeout {revoke['revoke_timeout_s']:g} s)\n"
            "dashed: target, revoke timeout + 1 s",
            fontsize=10,
        )
        ax.set_ylabel("s from member 2's first poll")
        ax.legend(fontsize=8)
    if "memory" in document:
        ax = flat[index]
        index += 1
        memory = document["memory"]
        for name in ORDER:
            run = memory["runs"].get(name)
            if not run or not run.get("rss_samples"):
                continue
            start = run.get("polling_s") or 0.0
            xs = [t - start for t, _ in run["rss_samples"]]
            ys = [r / 1e6 for _, r in run["rss_samples"]]
            ax.plot(xs, ys, label=NAMES[name], color=COLORS[name])
        ax.set_title(
            f"Consumer-process RSS draining {memory['messages']:,} x {memory['value_bytes']:,} B",
            fontsize=10,
        )
        ax.set_xlabel("s since first poll")
        ax.set_ylabel("RSS MB")
        ax.legend(fontsize=8)
    for ax in flat[index:]:
        ax.axis("off")
    quick = " (quick sizes)" if document.get("quick") else ""
    fig.suptitle(
        f"procpool-kafka side by side, {document.get('workers', 2)} workers, "
        f"{document['date'][:10]}{quick}",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    document = json.loads(Path(argv[0]).read_text())
    draw(document, Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
