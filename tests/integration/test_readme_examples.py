"""README.md's examples, run against the real broker with only addresses and names
substituted (each substitution must find its text, so a changed README fails here loudly)."""

from __future__ import annotations

import functools
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from procpool_kafka import ProcPoolConsumer
from procpool_kafka.retry import H_ATTEMPT
from tests.integration.handlers import read_store, scripted
from tests.integration.test_cli import (
    HANDLER,
    _free_port,
    cli_env,
    run_cli,
    summary_of,
)
from tests.kafka_helpers import KafkaTestEnv, unique_name
from tests.readme_blocks import blocks_run_by


def substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"README example no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def run_script(path: Path, code: str) -> subprocess.CompletedProcess[str]:
    path.write_text(code)
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


#: the README's render(): a little pure-Python CPU work per tile
RENDER = """
def render(value: bytes) -> None:
    sum(i * i for i in range(len(value) * 100))

"""


def test_library_example(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    [block] = blocks_run_by("tests/integration/test_readme_examples.py::test_library_example")
    topic = kafka.create_topic("tiles", partitions=2)
    kafka.produce(topic, [b"tile"] * 20)
    code = substitute(
        block.text,
        {
            '"127.0.0.1:9092"': repr(kafka.bootstrap),
            '"renderers"': repr(unique_name("renderers")),
            '["tiles"]': repr([topic]),
            "workers=4": "workers=2",
            "summary = consumer.run()": "summary = consumer.run(until_end=True)",
        },
    )
    result = run_script(tmp_path / "library_example.py", RENDER + code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("records ok=20 failed=0 retried=0 dead-lettered=0 in ")
    assert "2/2 partitions committed to the end" in result.stdout


def _retry_example_config(block_text: str, kafka: KafkaTestEnv, prefix: str, pattern: bool) -> Any:
    """The README's policy and config, its names made unique (and its pattern variant)."""
    replacements = {
        "ConsumerConfig(...,": (
            f"ConsumerConfig(bootstrap_servers={kafka.bootstrap!r}, "
            f"group_id={unique_name('g')!r}, commit_interval=0.2,"
        ),
        "initial_delay=15,": "initial_delay=30,",  # the copies stay due later than the test
    }
    if pattern:
        replacements['topic="orders",  # or topic_pattern=r"orders-.*"'] = (
            'topic_pattern=r"orders-.*",'
        )
        replacements['topics=["orders"]'] = 'topics=["orders-eu"]'
    code = substitute(block_text, replacements).replace('"orders', f'"{prefix}')
    namespace: dict[str, Any] = {}
    exec("from procpool_kafka import ConsumerConfig\n" + code, namespace)
    return namespace["config"]


def test_retry_example_with_topic_and_with_topic_pattern(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    """Both the README's policy and its commented alternative: a transient failure goes to
    the first retry tier, a listed non-retryable type straight to the dead-letter topic."""
    [block] = blocks_run_by(
        "tests/integration/test_readme_examples.py::test_retry_example_with_topic_and_with_topic_pattern"
    )
    for pattern in (False, True):
        prefix = unique_name("orders")
        base = f"{prefix}-eu" if pattern else prefix
        kafka.create_named_topic(base, partitions=1)
        kafka.track(f"{prefix}-retry-1m", f"{prefix}-retry-10m", f"{prefix}-dlq")
        config = _retry_example_config(block.text, kafka, prefix, pattern)
        assert list(config.topics) == [base]
        kafka.produce(base, [b"ok:", b"failuntil:2:", b"fail:"])
        store = str(tmp_path / f"store-{pattern}.jsonl")
        with ProcPoolConsumer(config, functools.partial(scripted, store)) as consumer:
            summary = consumer.run(until_end=True)
        assert (summary.records_ok, summary.records_retried) == (1, 1), pattern
        assert summary.records_dead_lettered == 1, "ValueError is listed as non-retryable"
        [copy] = kafka.consume_all(f"{prefix}-retry-1m", expected=1)
        assert dict(copy.headers() or [])[H_ATTEMPT] == b"2"
        [dead] = kafka.consume_all(f"{prefix}-dlq", expected=1)
        assert dead.value() == b"fail:"
        assert [e["topic"] for e in read_store(store, "start")] == [base] * 3


def test_command_line_example(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    [block] = blocks_run_by("tests/integration/test_readme_examples.py::test_command_line_example")
    topic = kafka.create_topic("tiles", partitions=2)
    kafka.track(f"{topic}-retry", f"{topic}-dlq")
    kafka.produce(topic, [b"ok:"] * 10 + [b"failuntil:2:"])
    command = substitute(
        block.text.replace("\\\n", " "),
        {
            "myapp.render:handle": HANDLER,
            "127.0.0.1:9092": kafka.bootstrap,
            "renderers": unique_name("renderers"),
            "--workers 4": "--workers 2",
            "--metrics-port 9464": f"--metrics-port {_free_port()}",
        },
    ).replace("tiles", topic)
    argv = shlex.split(command)
    assert argv[0] == "procpool-kafka"
    result = run_cli([*argv[1:], "--until-end"], cli_env(tmp_path / "store.jsonl"), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert (summary["ok"], summary["retried"]) == ("10", "1"), "the copy is due in 15 s"


def test_metrics_server_example(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    [block] = blocks_run_by(
        "tests/integration/test_readme_examples.py::test_metrics_server_example"
    )
    topic = kafka.create_topic("metrics-example")
    kafka.produce(topic, [b"x"] * 5)
    setup = (
        "from procpool_kafka import ConsumerConfig, ProcPoolConsumer\n\n"
        "def handle(record):\n    pass\n\n"
        f"config = ConsumerConfig(bootstrap_servers={kafka.bootstrap!r}, "
        f"group_id={unique_name('g')!r}, topics=[{topic!r}], workers=1)\n"
    )
    code = substitute(
        block.text,
        {'"127.0.0.1", 9464': '"127.0.0.1", 0', "consumer.run()": "consumer.run(until_end=True)"},
    )
    result = run_script(tmp_path / "metrics_example.py", setup + code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("metrics on http://127.0.0.1:")
    assert result.stdout.strip().endswith("/metrics")
