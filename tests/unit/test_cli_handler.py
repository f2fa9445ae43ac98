"""Loading the handler named ``package.module:function`` (procpool_kafka.cli.handler)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procpool_kafka.cli.errors import UsageError
from procpool_kafka.cli.handler import load_handler

APP = """
VALUE = 3


class Handlers:
    @staticmethod
    def run(record):
        return "ran"
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory with ``cli_handler_app.py`` and ``cli_handler_broken.py``; sys.path and
    sys.modules as they were afterwards."""
    (tmp_path / "cli_handler_app.py").write_text(APP)
    (tmp_path / "cli_handler_broken.py").write_text("1 / 0\n")
    monkeypatch.setattr(sys, "path", sys.path[:])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_dotted_attribute_is_loaded_from_the_app_dir(app_dir: Path) -> None:
    handler = load_handler("cli_handler_app:Handlers.run", str(app_dir))
    assert handler(None) == "ran"  # type: ignore[arg-type]
    assert str(app_dir) in sys.path


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cli_handler_app", "handler 'cli_handler_app' must look like package.module:function"),
        (":run", "handler ':run' must look like package.module:function"),
        ("cli_handler_app:", "handler 'cli_handler_app:' must look like package.module:function"),
        (
            "cli_handler_missing:run",
            "cannot import handler module 'cli_handler_missing': "
            "No module named 'cli_handler_missing'",
        ),
        (
            "cli_handler_broken:run",
            "importing handler module 'cli_handler_broken' failed: "
            "ZeroDivisionError: division by zero",
        ),
        (
            "cli_handler_app:Handlers.nope",
            "module 'cli_handler_app' has no attribute 'Handlers.nope'",
        ),
        ("cli_handler_app:VALUE", "handler 'cli_handler_app:VALUE' is not callable"),
    ],
)
def test_every_failure_is_one_usage_line(app_dir: Path, spec: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_handler(spec, str(app_dir))
    assert str(caught.value) == message


def test_an_app_dir_that_is_no_directory_is_named(app_dir: Path) -> None:
    missing = app_dir / "no-such-dir"
    with pytest.raises(UsageError) as caught:
        load_handler("cli_handler_app:Handlers.run", str(missing))
    assert str(caught.value) == f"--app-dir {missing} is not a directory"
