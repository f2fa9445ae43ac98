"""The fenced code blocks of README.md and what each is marked with.

Every block needs a marker on the line right before its opening fence:

    <!-- run: tests/path/test_file.py::test_name -->   that test executes the block
    <!-- not-run: reason -->                           it cannot run, and why

``tests/unit/test_readme.py`` checks that every block is marked, that every named test
exists, and that each test named by a marker runs its blocks (it asks for them with
:func:`blocks_run_by`, which fails when none is marked for it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*(run|not-run):\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, text, 1-based line of the opening fence, marker."""

    language: str
    text: str
    line: int
    marker: str | None  # "run" or "not-run", None when unmarked
    argument: str  # the test id of a run marker, the reason of a not-run marker


def readme_blocks(path: Path = README) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, language = opening.groups()
        end = index + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path.name}:{index + 1}: fence never closed")
        marker = _MARKER.match(lines[index - 1]) if index > 0 else None
        blocks.append(
            Block(
                language=language,
                text="\n".join(lines[index + 1 : end]) + "\n",
                line=index + 1,
                marker=marker.group(1) if marker else None,
                argument=marker.group(2) if marker else "",
            )
        )
        index = end + 1
    return blocks


def blocks_run_by(test_id: str) -> list[Block]:
    """The blocks whose run marker names ``test_id`` (``tests/...py::test_name``)."""
    found = [b for b in readme_blocks() if b.marker == "run" and b.argument == test_id]
    assert found, f"no README block is marked <!-- run: {test_id} -->"
    return found
