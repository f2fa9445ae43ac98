"""The peers' virtual environments: benchmark-only, never dependencies of procpool-kafka.

Each contender that is not this project runs in its own venv under
``~/.cache/procpool-kafka/bench-venvs/`` (``PROCPOOL_BENCH_VENVS`` overrides it), made here
with ``python -m venv`` and ``pip install`` of pinned versions. A venv is (re)installed when
its pinned requirement list changed; ``.bench-requirements`` inside it records the list.

* ``retriable``: retriable-kafka-client 0.7.0 (pins confluent-kafka 2.15.1). It does not
  import on Python 3.11, so this venv uses a Python 3.13 interpreter: ``PROCPOOL_BENCH_PY313``,
  else ``python3.13`` on PATH, else pyenv's ``~/.pyenv/versions/3.13*``.
* ``arroyo``: sentry-arroyo (the newest release when this was written, pinned).
* ``plain``: the hand-written loop: confluent-kafka at the project venv's version.
* ``chart``: matplotlib, for the PNG only.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ARROYO_VERSION = "2.48.0"
RETRIABLE_VERSION = "0.7.0"
PSUTIL = "psutil==7.2.2"
MATPLOTLIB = "matplotlib==3.11.2"


def venv_root() -> Path:
    configured = os.environ.get("PROCPOOL_BENCH_VENVS")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "procpool-kafka" / "bench-venvs"


def find_python313() -> str | None:
    """A Python 3.13 interpreter for retriable-kafka-client, or None: the first of
    ``PROCPOOL_BENCH_PY313``, ``python3.13`` on PATH, pyenv's ``~/.pyenv/versions/3.13*``
    that really runs 3.13 (a pyenv shim on PATH fails when 3.13 is not an active version)."""
    candidates: list[str] = []
    configured = os.environ.get("PROCPOOL_BENCH_PY313")
    if configured:
        candidates.append(configured)
    found = shutil.which("python3.13")
    if found:
        candidates.append(found)
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    pattern = os.path.join(pyenv_root, "versions", "3.13*", "bin", "python")
    candidates.extend(sorted(glob.glob(pattern), reverse=True))
    for candidate in candidates:
        if runs_python_313(candidate):
            return candidate
    return None


def runs_python_313(python: str) -> bool:
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return False
    return result.returncode == 0 and result.stdout.strip() == "True"


def base_python() -> str:
    """The interpreter this venv was made from (the peers on 3.11 use the same one)."""
    return str(getattr(sys, "_base_executable", sys.executable))


@dataclass(frozen=True)
class VenvSpec:
    name: str
    interpreter: str | None
    requirements: tuple[str, ...]

    @property
    def path(self) -> Path:
        return venv_root() / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def venv_specs() -> dict[str, VenvSpec]:
    kafka = metadata.version("confluent-kafka")
    return {
        "retriable": VenvSpec(
            "retriable", find_python313(), (f"retriable-kafka-client=={RETRIABLE_VERSION}", PSUTIL)
        ),
        "arroyo": VenvSpec("arroyo", base_python(), (f"sentry-arroyo=={ARROYO_VERSION}", PSUTIL)),
        "plain": VenvSpec("plain", base_python(), (f"confluent-kafka=={kafka}", PSUTIL)),
        "chart": VenvSpec("chart", base_python(), (MATPLOTLIB,)),
    }


def ensure(spec: VenvSpec, log: list[str]) -> Path | None:
    """The venv's python, made and installed if needed; None (and a log line) when it can't be."""
    if spec.interpreter is None:
        log.append(f"{spec.name}: no suitable Python interpreter found; skipped")
        return None
    marker = spec.path / ".bench-requirements"
    wanted = "\n".join(spec.requirements) + "\n"
    if spec.python.exists() and marker.exists() and marker.read_text() == wanted:
        return spec.python
    print(f"  making the {spec.name} venv ({', '.join(spec.requirements)}) ...", flush=True)
    try:
        if not spec.python.exists():
            spec.path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [spec.interpreter, "-m", "venv", str(spec.path)],
                check=True,
                capture_output=True,
                text=True,
            )
        subprocess.run(
            [str(spec.python), "-m", "pip", "install", "-q", *spec.requirements],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as error:
        log.append(f"{spec.name}: venv set-up failed: {(error.stderr or '').strip()[-500:]}")
        return None
    marker.write_text(wanted)
    return spec.python


def installed_versions(python: Path, packages: list[str]) -> dict[str, str]:
    """What pip actually installed (for the results file)."""
    code = (
        "import json, importlib.metadata as m, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [str(python), "-c", code, *packages], capture_output=True, text=True, check=False
    )
    import json  # noqa: PLC0415 (only here)

    try:
        return dict(json.loads(result.stdout))
    except ValueError:
        return {}
