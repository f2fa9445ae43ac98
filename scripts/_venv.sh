# Sourced by scripts/test and scripts/demo: make .venv if needed and install the project
# with its dev extra whenever pyproject.toml changed since the last install.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import procpool_kafka, pytest, hypothesis, prometheus_client" 2>/dev/null \
        || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch .venv/.installed
fi
