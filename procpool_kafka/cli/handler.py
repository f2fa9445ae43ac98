"""Importing the handler the command line names as ``package.module:function``.

The handler's module is looked up in ``--app-dir`` (when given), then the current
directory, then ``sys.path``; every way this can fail is one UsageError line.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from procpool_kafka.cli.errors import UsageError
from procpool_kafka.records import Record


def load_handler(spec: str, app_dir: str | None) -> Callable[[Record], object]:
    """Import ``package.module:function``; UsageError with one clear line when it cannot."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"handler {spec!r} must look like package.module:function")
    for path in (app_dir, os.getcwd()):
        if path and os.path.abspath(path) not in map(os.path.abspath, sys.path):
            sys.path.insert(0, os.path.abspath(path))
    if app_dir and not os.path.isdir(app_dir):
        raise UsageError(f"--app-dir {app_dir} is not a directory")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UsageError(f"cannot import handler module {module_name!r}: {error}") from None
    except Exception as error:
        raise UsageError(
            f"importing handler module {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"handler {spec!r} is not callable")
    handler: Callable[[Record], object] = target
    return handler
