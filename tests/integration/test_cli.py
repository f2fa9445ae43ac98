"""The procpool-kafka command end to end, as a subprocess against the real broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.handlers import read_store
from tests.kafka_helpers import KafkaTestEnv, unique_name, wait_for

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "procpool_kafka.cli"]
HANDLER = "tests.integration.handlers:from_env"


def cli_env(store: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPOOL_KAFKA_")}
    env["PROCPOOL_TEST_STORE"] = str(store)
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn_cli(args: list[str], store: Path, *, new_session: bool = False) -> subprocess.Popen[str]:
    """Start the CLI in the background (stdout and stderr piped, text) with ``store``."""
    return subprocess.Popen(
        [*CLI, *args],
        cwd=REPO,
        env=cli_env(store),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def summary_of(stdout: str) -> dict[str, str]:
    line = next(line for line in stdout.splitlines() if line.startswith("summary:"))
    return dict(re.findall(r"([\w-]+)=(\S+)", line))


def base_args(kafka: KafkaTestEnv, topic: str, group: str) -> list[str]:
    return ["run", HANDLER, "-b", kafka.bootstrap, "-G", group, "-t", topic, "--workers", "2"]


def test_until_end_processes_exactly_the_backlog_and_exits_0(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("cli-batch", partitions=4)
    kafka.produce(topic, [b"ok:"] * 150 + [b"fail:"] + [b"failuntil:2:"] * 3)
    store = tmp_path / "store.jsonl"
    group = unique_name("g")
    args = [
        *base_args(kafka, topic, group),
        "--until-end",
        "--wait-retries",
        "--retry-topic",
        f"{topic}={topic}-retry",
        "--dlq-topic",
        f"{topic}={topic}-dlq",
        "--create-topics",
        "--initial-delay",
        "0.5",
        "--max-attempts",
        "2",
    ]
    result = run_cli(args, cli_env(store))
    kafka.track(f"{topic}-retry", f"{topic}-dlq")
    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["ok"] == "153"  # 150 + 3 retried successes
    assert summary["retried"] == "4"  # the poison once, the transient ones once each
    assert summary["dead-lettered"] == "1"
    assert "progress:" in result.stderr, "plain progress lines when not on a TTY"
    assert kafka.fully_committed(group, topic)
    assert len(read_store(store)) == 153
    with_fail = run_cli([*args, "--fail-on-dlq"], cli_env(tmp_path / "again.jsonl"))
    assert with_fail.returncode == 0, "nothing left to do: no record dead-lettered this run"


def test_fail_on_dlq_exits_3(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("cli-dlq", partitions=1)
    kafka.produce(topic, [b"ok:", b"fail:"])
    args = [
        *base_args(kafka, topic, unique_name("g")),
        "--until-end",
        "--dlq-topic",
        f"{topic}={topic}-dlq",
        "--create-topics",
        "--fail-on-dlq",
    ]
    result = run_cli(args, cli_env(tmp_path / "store.jsonl"))
    kafka.track(f"{topic}-dlq")
    assert result.returncode == 3, result.stderr
    assert summary_of(result.stdout)["dead-lettered"] == "1"


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--group-protocol", "consumer"], {}),
        ([], {"PROCPOOL_KAFKA_GROUP_PROTOCOL": "consumer"}),
        (["-X", "group.protocol=consumer"], {}),
    ],
)
def test_consumer_group_protocol_runs_a_batch(
    kafka: KafkaTestEnv, tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    topic = kafka.create_topic("cli-kip848", partitions=2)
    kafka.produce(topic, [b"ok:"] * 20)
    group = unique_name("g")
    result = run_cli(
        [*base_args(kafka, topic, group), "--until-end", *args],
        cli_env(tmp_path / "store.jsonl", **env),
    )
    assert result.returncode == 0, result.stderr
    assert summary_of(result.stdout)["ok"] == "20"
    assert kafka.fully_committed(group, topic)
    assert kafka.group_protocol(group) == "consumer"


def test_default_worker_count_follows_the_cpu_affinity(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    """Under taskset (like a pod's cpuset) the default is the CPUs allowed, not the host's."""
    topic = kafka.create_topic("cli-cpus", partitions=1)
    kafka.produce(topic, [b"ok:"] * 3)
    args = ["run", HANDLER, "-b", kafka.bootstrap, "-G", unique_name("g"), "-t", topic]
    env = {k: v for k, v in cli_env(tmp_path / "s.jsonl").items() if k != "LOKY_MAX_CPU_COUNT"}
    result = subprocess.run(
        ["taskset", "-c", "0", *CLI, *args, "--until-end"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"consuming {topic} as group" in result.stderr
    assert "with 1 workers" in result.stderr, result.stderr


def test_precedence_flag_over_env_over_file(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("cli-prec", partitions=1)
    kafka.produce(topic, [b"ok:"] * 5)
    file_group, env_group, flag_group = (unique_name(n) for n in ("file", "env", "flag"))
    config = tmp_path / "procpool.toml"
    config.write_text(
        f'handler = "{HANDLER}"\nbootstrap-servers = "{kafka.bootstrap}"\n'
        f'group-id = "{file_group}"\ntopic = ["{topic}"]\nuntil-end = true\n'
        "workers = 1\n"
    )
    store = tmp_path / "store.jsonl"
    only_file = run_cli(["run", "--config", str(config)], cli_env(store))
    assert only_file.returncode == 0, only_file.stderr
    assert kafka.committed(file_group, topic) == {0: 5}
    env = cli_env(store, PROCPOOL_KAFKA_GROUP_ID=env_group)
    assert run_cli(["run", "--config", str(config)], env).returncode == 0
    assert kafka.committed(env_group, topic) == {0: 5}, "env beats the file"
    result = run_cli(["run", "--config", str(config), "-G", flag_group], env)
    assert result.returncode == 0
    assert kafka.committed(flag_group, topic) == {0: 5}, "the flag beats env and file"


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("no_colon_here", "must look like package.module:function"),
        ("tests.no_such_module:f", "cannot import handler module 'tests.no_such_module'"),
        ("tests.integration.handlers:missing", "has no attribute 'missing'"),
        ("tests.integration.handlers:not_a_function", "is not callable"),
        ("tests.integration.handlers:unpicklable_handler", "cannot be pickled"),
    ],
)
def test_handler_errors_exit_2_with_one_line(
    kafka: KafkaTestEnv, tmp_path: Path, handler: str, message: str
) -> None:
    args = ["run", handler, "-b", kafka.bootstrap, "-G", "g", "-t", "whatever"]
    result = run_cli(args, cli_env(tmp_path / "s"), timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "many"], "--workers (from flag): expected a whole number, got 'many'"),
        (["--workers", "0"], "--workers (from flag): must be >= 1, got 0"),
        (["--retry-topic", "nonsense"], "expected TOPIC=NAME"),
        (["-X", "enable.auto.commit=true"], "--kafka-config (from flag): enable.auto.commit=true"),
        (["--log-format", "xml"], "--log-format must be text or json"),
        (["--config", "/nonexistent.toml"], "does not exist"),
        (
            ["--group-protocol", "kip848"],
            "--group-protocol (from flag): must be 'classic' or 'consumer', got 'kip848'",
        ),
        (
            ["--group-protocol", "consumer", "-X", "session.timeout.ms=6000"],
            "--kafka-config (from flag): session.timeout.ms is not supported with "
            "group_protocol='consumer': it is broker-side",
        ),
        (
            ["-X", "group.protocol=consumer", "-X", "partition.assignment.strategy=range"],
            "--kafka-config (from flag): partition.assignment.strategy is not supported with "
            "group_protocol='consumer'",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    kafka: KafkaTestEnv, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["run", HANDLER, "-b", kafka.bootstrap, "-G", "g", "-t", "t", *extra]
    result = run_cli(args, cli_env(tmp_path / "s"), timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_missing_topic_exits_2(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    missing = unique_name("missing")
    result = run_cli(
        ["run", HANDLER, "-b", kafka.bootstrap, "-G", "g", "-t", missing], cli_env(tmp_path / "s")
    )
    assert result.returncode == 2
    assert missing in result.stderr.strip().splitlines()[-1]


def test_sigterm_mid_run_exits_0_and_the_next_run_does_the_rest(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("cli-term", partitions=2)
    kafka.produce(topic, [b"slow:0.05:"] * 200)
    store = tmp_path / "store.jsonl"
    group = unique_name("g")
    process = spawn_cli(base_args(kafka, topic, group), store)
    try:
        wait_for(lambda: len(read_store(store)) >= 30, timeout=60, message="some work done")
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    first = {(e["partition"], e["offset"]) for e in read_store(store)}
    assert 30 <= len(first) < 200
    committed = kafka.committed(group, topic)
    second_store = tmp_path / "second.jsonl"
    result = run_cli([*base_args(kafka, topic, group), "--until-end"], cli_env(second_store))
    assert result.returncode == 0, result.stderr
    second = {(e["partition"], e["offset"]) for e in read_store(second_store)}
    assert first | second == {
        (p, o) for p, end in kafka.end_offsets(topic).items() for o in range(end)
    }
    assert all(o >= committed[p] for p, o in second), "only what was left"
    assert first & second == set(), "a graceful stop leaves no duplicates"


def test_sigterm_to_the_process_group_lets_running_handlers_finish(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    # systemd's default KillMode, `timeout` and `kill -TERM -PGID` signal every process of
    # the group, the workers too: they must finish their records, not die and run them again.
    topic = kafka.create_topic("cli-pgterm", partitions=2)
    for partition in (0, 1):
        kafka.produce(topic, [b"slow:2:"] * 3, partition=partition)
    store = tmp_path / "store.jsonl"
    group = unique_name("g")
    process = spawn_cli(base_args(kafka, topic, group), store, new_session=True)
    try:
        wait_for(
            lambda: len(read_store(store, "start")) == 2,
            timeout=60,
            message="both workers run a 2 s record",
        )
        started = read_store(store, "start")
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    summary = summary_of(stdout)
    assert summary["worker-crashes"] == "0", stdout
    assert summary["ok"] == "2", stdout
    done = read_store(store)
    running = {(e["partition"], e["offset"]) for e in started}
    assert {(e["partition"], e["offset"]) for e in done} == running, "the running ones finished"
    assert len(read_store(store, "start")) == 2, "nothing ran twice, nothing new started"
    assert {e["pid"] for e in done} == {e["pid"] for e in started}, "in the same workers"
    prefix = {p: 0 for p in (0, 1)}  # the done records contiguous from offset 0
    while any((p, prefix[p]) in running for p in (0, 1)):
        prefix = {p: n + 1 if (p, n) in running else n for p, n in prefix.items()}
    assert any(prefix.values())
    expected = {p: n if n else -1001 for p, n in prefix.items()}  # -1001: nothing committed
    assert kafka.committed(group, topic) == expected, "what is done is committed"


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError as error:  # not listening yet
        return 0, str(error)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_endpoint_counters_move_and_lag_reaches_zero(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("cli-metrics", partitions=2)
    kafka.produce(topic, [b"slow:0.02:"] * 100)
    store = tmp_path / "store.jsonl"
    port = _free_port()
    process = spawn_cli(
        [*base_args(kafka, topic, unique_name("g")), "--metrics-port", str(port)], store
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: fetch(base + "/readyz")[0] == 200, timeout=60, message="ready")
        assert fetch(base + "/healthz") == (200, "ok")
        early = metric(fetch(base + "/metrics")[1], "procpool_kafka_records_succeeded_total")
        wait_for(
            lambda: (
                metric(fetch(base + "/metrics")[1], "procpool_kafka_records_succeeded_total") == 100
            ),
            timeout=60,
            message="counters reach 100",
        )
        assert early < 100, "the counter moved during the run"
        wait_for(
            lambda: (
                (text := fetch(base + "/metrics")[1]).count("procpool_kafka_lag{") == 2
                and metric(text, "procpool_kafka_lag") == 0
            ),
            timeout=30,
            message="lag reaches 0",
        )
        assert fetch(base + "/nope")[0] == 404
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0


def test_password_from_env_never_appears(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    secret = "pw-" + unique_name("secret")
    env = cli_env(
        tmp_path / "s",
        PROCPOOL_KAFKA_KAFKA_CONFIG=(
            f"security.protocol=SASL_PLAINTEXT;sasl.mechanism=SCRAM-SHA-512;"
            f"sasl.username=nobody;sasl.password={secret}"
        ),
    )
    args = ["run", HANDLER, "-b", "127.0.0.1:9", "-G", "g", "-t", "t", "--connect-timeout", "2"]
    result = run_cli([*args, "--log-level", "DEBUG"], env, timeout=60)
    assert result.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:9" in result.stderr
    help_text = run_cli(["run", "--help"], env).stdout
    for output in (result.stdout, result.stderr, help_text):
        assert secret not in output


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_version_and_help() -> None:
    version = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("procpool-kafka ")
    help_text = subprocess.run(
        [*CLI, "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--bootstrap-servers", "--until-end", "--metrics-port", "PROCPOOL_KAFKA_"):
        assert option in help_text
    assert "(default: 30.0)" in help_text
