"""README check: every fenced code block of README.md is executed by a named test or marked
as not runnable with a reason (see tests/readme_blocks.py for the markers)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from procpool_kafka.cli.config import build_config
from procpool_kafka.cli.options import load_file, resolve
from tests.readme_blocks import REPO, Block, blocks_run_by, readme_blocks


def _runs_its_blocks(test_id: str) -> str | None:
    """Why ``test_id`` does not name a test that asks for its README blocks (None if it does)."""
    path_text, sep, name = test_id.partition("::")
    path = REPO / path_text
    if not sep or not name or not path.is_file():
        return f"{test_id!r} does not name tests/...py::test_name of an existing file"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = [
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name
    ]
    if not functions:
        return f"{path_text} has no test function {name}"
    for node in ast.walk(functions[0]):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "blocks_run_by"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == test_id
        ):
            return None
    return f"{test_id} never calls blocks_run_by({test_id!r})"


def problems(blocks: list[Block]) -> list[str]:
    found = []
    for block in blocks:
        where = f"README.md:{block.line} ({block.language or 'plain'} block)"
        if block.marker is None:
            found.append(f"{where}: no <!-- run: ... --> or <!-- not-run: reason --> before it")
        elif block.marker == "not-run" and len(block.argument) < 10:
            found.append(f"{where}: not-run needs a reason, got {block.argument!r}")
        elif block.marker == "run":
            reason = _runs_its_blocks(block.argument)
            if reason is not None:
                found.append(f"{where}: {reason}")
    return found


def test_every_block_is_run_by_a_test_or_marked_not_runnable() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 8
    assert problems(blocks) == []
    runnable = [b for b in blocks if b.language in ("python", "toml")]
    assert all(b.marker == "run" for b in runnable), "Python and TOML examples must be run"


def test_the_checker_finds_unmarked_blocks_and_missing_tests(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "text\n```python\nx = 1\n```\n"
        "<!-- not-run: -->\n```bash\nls\n```\n"
        "<!-- run: tests/unit/test_readme.py::test_no_such_test -->\n```\ny\n```\n"
        "<!-- run: tests/unit/test_readme.py::"
        "test_every_block_is_run_by_a_test_or_marked_not_runnable -->\n"
        "~~~toml\nz = 1\n~~~\n"
    )
    found = problems(readme_blocks(readme))
    assert len(found) == 4, found
    assert "README.md:2 (python block): no <!-- run" in found[0]
    assert "not-run needs a reason" in found[1]
    assert "has no test function test_no_such_test" in found[2]
    assert "never calls blocks_run_by" in found[3]
    readme.write_text("```python\nnever closed\n")
    with pytest.raises(ValueError, match="never closed"):
        readme_blocks(readme)


def test_toml_example_is_a_valid_configuration(tmp_path: Path) -> None:
    [block] = blocks_run_by("tests/unit/test_readme.py::test_toml_example_is_a_valid_configuration")
    path = tmp_path / "procpool.toml"
    path.write_text(block.text)
    file_values = load_file(str(path))
    assert file_values["handler"] == "myapp.render:handle"
    values = resolve({}, {}, file_values)
    config = build_config(values)
    assert list(config.topics) == ["tiles", "thumbnails"]
    assert config.worker_count == 8
    assert config.retry_topics() == ["tiles-retry-1m", "tiles-retry-10m"]
    assert config.dlq_topics() == ["tiles-dlq"]
    policy = config.retry_policies.for_base_topic("tiles")
    assert policy is not None and policy.max_attempts == 4 and policy.backoff.initial_delay == 60
    assert config.kafka_config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert values["log_format"] == "json" and values["metrics_port"] == 9464


_SKIPPED_DIRS = {".git", ".venv", ".kafka-local", "__pycache__", ".mypy_cache", ".ruff_cache"}


def _project_files() -> list[Path]:
    return [
        path
        for path in REPO.rglob("*")
        if path.is_file()
        and not _SKIPPED_DIRS.intersection(path.relative_to(REPO).parts)
        and path.suffix in (".py", ".md", ".toml", ".txt", "")
    ]


def test_no_file_points_outside_the_project() -> None:
    """Design notes live in docs/architecture.md: no path into a sibling notes directory."""
    outside = ("../" + "shared", "DESIGN" + ".md")
    offenders = [
        f"{path.relative_to(REPO)}: {needle}"
        for path in _project_files()
        for needle in outside
        if needle in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert offenders == []


def test_architecture_doc_names_existing_modules_and_tests() -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    for test_id in re.findall(r"tests/[\w/]+\.py::\w+", text):
        path, name = test_id.split("::")
        assert f"def {name}(" in (REPO / path).read_text(encoding="utf-8"), test_id
    listed = set(re.findall(r"^  ((?:\w+/)?\w+\.py) ", text, flags=re.MULTILINE))
    package = REPO / "procpool_kafka"
    # a subpackage's modules are listed with its prefix: pool/_wire.py
    paths = [*package.glob("*.py"), *package.glob("*/*.py")]
    modules = {path.relative_to(package).as_posix() for path in paths} - {"_version.py"}
    assert listed == modules, "the module layout lists every module, and only those"
