"""Command-line configuration: the same syntax from flags, environment and file, and every
bad value one line on stderr naming the flag, its source and the value, exit code 2.

The cases here are the "Bad configuration" table of README.md (each message as shown there).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.handlers import read_store
from tests.integration.test_cli import HANDLER, REPO, cli_env, run_cli, summary_of
from tests.kafka_helpers import KafkaTestEnv, unique_name


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("procpool-kafka: error: "), stderr
    return lines[0].removeprefix("procpool-kafka: error: ")


#: (extra arguments, extra environment, the message after "procpool-kafka: error: ")
BAD_VALUES: list[tuple[list[str], dict[str, str], str]] = [
    (["--workers", "0"], {}, "--workers (from flag): must be >= 1, got 0"),
    (
        [],
        {"PROCPOOL_KAFKA_WORKERS": "0"},
        "--workers (from PROCPOOL_KAFKA_WORKERS): must be >= 1, got 0",
    ),
    (["--workers", "many"], {}, "--workers (from flag): expected a whole number, got 'many'"),
    (["--task-timeout", "0"], {}, "--task-timeout (from flag): must be > 0, got 0"),
    (["--jitter", "1"], {}, "--jitter (from flag): must be in [0, 1), got 1"),
    (["--max-attempts", "0"], {}, "--max-attempts (from flag): must be an int >= 1, got 0"),
    (
        ["--non-retryable", "not a type"],
        {},
        "--non-retryable (from flag): entries must be exception type names like ValueError "
        "or myapp.errors.BadInput, got 'not a type'",
    ),
    (["--progress-interval", "0"], {}, "--progress-interval (from flag): must be > 0, got 0"),
    (["--progress-interval", "-5"], {}, "--progress-interval (from flag): must be > 0, got -5"),
    (
        ["-t", "tiles;thumbnails"],
        {},
        "--topic (from flag): 'tiles;thumbnails' is not a valid topic name: ';' not allowed "
        "(Kafka allows 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-')",
    ),
    (
        ["--retry-topic", "t=t retry"],
        {},
        "--retry-topic (from flag): 't retry' is not a valid topic name: ' ' not allowed "
        "(Kafka allows 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-')",
    ),
    (
        ["-t", "u", "--retry-topic", "t=r", "--retry-topic", "u=r"],
        {},
        "--retry-topic (from flag): 'r' is used by both the retry policy for topic 't' and the "
        "retry policy for topic 'u'",
    ),
    (
        ["-t", "t-retry", "--retry-topic", "t=t-retry"],
        {},
        "--topic (from flag): 't-retry' is a retry or dead-letter topic; list base topics only",
    ),
    (
        ["--initial-delay", "10", "--max-delay", "5"],
        {},
        "--max-delay (from flag): must be >= the initial delay (10), got 5",
    ),
    (
        ["--dlq-topic", "t=t-dlq,t-dlq2"],
        {},
        "--dlq-topic (from flag): one dead-letter topic per topic, got t=t-dlq,t-dlq2",
    ),
    (
        [],
        {"PROCPOOL_KAFKA_RETRY_TOPIC": "nonsense"},
        "--retry-topic (from PROCPOOL_KAFKA_RETRY_TOPIC): expected TOPIC=NAME[,NAME...], "
        "got 'nonsense'",
    ),
    (
        ["-X", "bogus.prop=1"],
        {},
        '--kafka-config (from flag): No such configuration property: "bogus.prop"',
    ),
    (
        ["--metrics-port", "99999"],
        {},
        "--metrics-port (from flag): must be a port in 0..65535, got 99999",
    ),
]


@pytest.mark.parametrize(
    ("extra", "env", "message"), BAD_VALUES, ids=[case[2].split(" ")[0] for case in BAD_VALUES]
)
def test_bad_values_exit_2_with_one_line_naming_flag_and_value(
    kafka: KafkaTestEnv, tmp_path: Path, extra: list[str], env: dict[str, str], message: str
) -> None:
    args = ["run", HANDLER, "-b", kafka.bootstrap, "-G", "g", "-t", "t", *extra]
    result = run_cli(args, cli_env(tmp_path / "s", **env), timeout=60)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result.stderr) == message


def test_metrics_port_in_use_and_unresolvable_host_exit_2(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("cli-metrics-bad")
    args = ["run", HANDLER, "-b", kafka.bootstrap, "-G", "g", "-t", topic, "--workers", "1"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli([*args, "--metrics-port", str(port)], cli_env(tmp_path / "s"))
    assert result.returncode == 2, result.stderr
    assert one_error_line(result.stderr) == (
        f"--metrics-port (from flag): cannot serve metrics on 127.0.0.1:{port}: "
        "Address already in use"
    )
    result = run_cli(
        [*args, "--metrics-port", "0", "--metrics-host", "no-such-host.invalid"],
        cli_env(tmp_path / "s"),
    )
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert line.startswith("--metrics-host (from flag): cannot resolve 'no-such-host.invalid': ")


def test_misspelled_environment_variable_is_one_warning_line(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    env = cli_env(tmp_path / "s", PROCPOOL_KAFKA_WORKRES="2", PROCPOOL_KAFKA_CACHE="/tmp")
    result = run_cli(["run", HANDLER, "-b", kafka.bootstrap, "-t", "t"], env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "procpool-kafka: warning: unknown environment variable PROCPOOL_KAFKA_WORKRES ignored "
        "(did you mean PROCPOOL_KAFKA_WORKERS?)",
        "procpool-kafka: error: missing required option(s): --group-id",
    ]


def test_bare_command_prints_help_and_exits_2() -> None:
    result = run_cli([], cli_env(Path("unused")), timeout=60)
    assert result.returncode == 2
    assert "usage: procpool-kafka" in result.stderr
    assert result.stdout == ""


def test_same_list_syntax_from_flag_env_and_file(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    """`-t a,b` is two topics; `a=r1,r2` is two retry tiers from the environment and the file
    alike; a record failing twice goes through both tiers and then succeeds."""
    common = [
        *("--workers", "1", "--until-end", "--wait-retries", "--create-topics"),
        *("--initial-delay", "0.2", "--max-delay", "1", "--max-attempts", "3"),
    ]
    for source in ("env", "file"):
        tiles, thumbs = kafka.create_topic("tiles", 2), kafka.create_topic("thumbs", 1)
        kafka.produce(tiles, [b"ok:"] * 5 + [b"failuntil:3:"])
        kafka.produce(thumbs, [b"ok:"] * 3)
        tier1, tier2 = f"{tiles}-retry-1m", f"{tiles}-retry-10m"
        kafka.track(tier1, tier2)
        same_syntax = f"{tiles}={tier1},{tier2}"
        env = {"PROCPOOL_KAFKA_RETRY_TOPIC": same_syntax} if source == "env" else {}
        config_file = tmp_path / f"{source}.toml"
        config_file.write_text(f'retry-topic = "{same_syntax}"\n')
        file_args = ["--config", str(config_file)] if source == "file" else []
        store = tmp_path / f"{source}.jsonl"
        group = unique_name(f"g-{source}")
        args = ["run", HANDLER, "-b", kafka.bootstrap, "-G", group, "-t", f"{tiles},{thumbs}"]
        result = run_cli([*args, *common, *file_args], cli_env(store, **env))
        assert result.returncode == 0, result.stderr
        summary = summary_of(result.stdout)
        assert (summary["ok"], summary["retried"]) == ("9", "2"), (source, result.stdout)
        attempts = sorted(
            (e["attempt"], e["topic"])
            for e in read_store(store, "start")
            if "failuntil" in e["value"]
        )
        assert attempts == [(1, tiles), (2, tier1), (3, tier2)], source
        assert kafka.fully_committed(group, thumbs)


def test_unreachable_broker_logs_few_lines_named_by_client_role(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens once the socket is closed
    args = ["run", HANDLER, "-b", f"127.0.0.1:{port}", "-G", "g", "-t", "t"]
    result = run_cli([*args, "--connect-timeout", "5"], cli_env(tmp_path / "s"), timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"procpool-kafka: error: cannot reach Kafka at 127.0.0.1:{port}")
    assert len(lines) <= 10, result.stderr
    librdkafka = [line for line in lines if "librdkafka" in line]
    assert librdkafka and all("procpool_kafka.librdkafka.admin: FAIL" in x for x in librdkafka)
    assert "rdkafka#producer" not in result.stderr


def test_every_case_is_in_the_readme_table() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for _extra, _env, message in BAD_VALUES:
        assert f"`{message}`" in readme, message
