"""Security against the SASL_PLAINTEXT (SCRAM-SHA-512) listener of scripts/kafka-local.

- consuming, retry and dead-letter producing work with the right credentials (library, CLI);
- wrong credentials give a clear error within connect_timeout (library) and exit code 1
  (CLI);
- the password never appears in logs (at DEBUG, with librdkafka's own conf/security debug
  output), error messages, /metrics, /healthz, /readyz or ``--help``, wherever it comes from
  (environment or TOML file);
- the metrics endpoint binds to 127.0.0.1 unless --metrics-host says otherwise.

The SASL user and password come from the ``local_broker`` fixture (what
``scripts/kafka-local up --sasl`` printed). Nothing here is skipped: with another broker
(KAFKA_BOOTSTRAP_SERVERS, or testcontainers) the tests fail and say why.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from procpool_kafka import BrokerUnavailableError, ConsumerConfig, ProcPoolConsumer
from procpool_kafka.retry import H_ATTEMPTS, H_CONSUMER_GROUP, Backoff, RetryPolicy
from tests.conftest import LocalBroker
from tests.integration.handlers import read_store, scripted
from tests.integration.runner import FAST_GROUP, ThreadedConsumer
from tests.integration.test_cli import CLI, HANDLER, REPO, cli_env, fetch, metric, run_cli
from tests.kafka_helpers import KafkaTestEnv, unique_name, wait_for

#: librdkafka's own debug output: its configuration dump and the SASL handshake
LIBRDKAFKA_DEBUG = "conf,security"
#: how librdkafka's configuration dump shows the password (proof the dump was captured)
LIBRDKAFKA_REDACTED = "sasl.password = [redacted]"


@dataclass(frozen=True)
class Sasl:
    bootstrap: str
    mechanism: str
    username: str
    password: str

    def kafka_config(
        self, username: str | None = None, password: str | None = None
    ) -> dict[str, str]:
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.username if username is None else username,
            "sasl.password": self.password if password is None else password,
        }

    def env_value(self, password: str | None = None) -> str:
        """The PROCPOOL_KAFKA_KAFKA_CONFIG form: key=value pairs separated by ';'."""
        settings = self.kafka_config(password=password)
        return ";".join(f"{key}={value}" for key, value in settings.items())


@pytest.fixture
def sasl(local_broker: LocalBroker | None) -> Sasl:
    if local_broker is None:
        pytest.fail(
            "the security tests need the SASL listener of scripts/kafka-local, but another "
            "broker was selected (KAFKA_BOOTSTRAP_SERVERS is set, or a Docker engine answers "
            "and testcontainers is used); unset KAFKA_BOOTSTRAP_SERVERS to run them",
            pytrace=False,
        )
    printed = local_broker.sasl
    keys = ("sasl_bootstrap", "sasl_mechanism", "sasl_username", "sasl_password")
    missing = [key for key in keys if not printed.get(key)]
    if missing:
        pytest.fail(
            f"scripts/kafka-local up --sasl did not print {', '.join(missing)}", pytrace=False
        )
    return Sasl(*(printed[key] for key in keys))


def no_jitter(initial: float) -> Backoff:
    return Backoff(initial_delay=initial, multiplier=1.0, max_delay=5.0, jitter=0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening_hosts(pid: int, port: int) -> set[str]:
    """The addresses process ``pid`` listens on at ``port`` (empty once it is gone)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="inet")
    except psutil.NoSuchProcess:
        return set()
    return {
        conn.laddr.ip
        for conn in connections
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    }


# ---------------------------------------------------------------------- library


def test_consume_retry_and_dead_letter_through_the_sasl_listener(
    kafka: KafkaTestEnv, sasl: Sasl, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = kafka.create_topic("sasl", partitions=2)
    retry_topic, dlq = f"{topic}-retry", f"{topic}-dlq"
    kafka.track(retry_topic, dlq)
    policy = RetryPolicy(
        topic=topic,
        retry_topics=(retry_topic,),
        max_attempts=2,
        backoff=no_jitter(0.3),
        dlq_topic=dlq,
    )
    kafka.produce(topic, [b"ok:"] * 20 + [b"failuntil:2:"] * 2 + [b"fail:"])
    store = str(tmp_path / "store.jsonl")
    config = ConsumerConfig(
        bootstrap_servers=sasl.bootstrap,
        group_id=unique_name("g"),
        topics=[topic],
        workers=2,
        commit_interval=0.2,
        kafka_config={**FAST_GROUP, **sasl.kafka_config(), "debug": LIBRDKAFKA_DEBUG},
        retry=[policy],
        create_topics=True,  # the admin client creates them through the SASL listener too
    )
    caplog.set_level(logging.DEBUG)
    with ThreadedConsumer(config, functools.partial(scripted, store)) as running:
        dead = kafka.consume_all(dlq, expected=1, timeout=60)
        wait_for(lambda: len(read_store(store)) == 22, timeout=60, message="22 handled")
        wait_for(
            lambda: (
                kafka.fully_committed(config.group_id, topic)
                and kafka.fully_committed(config.group_id, retry_topic)
            ),
            timeout=30,
            message="commits through the SASL listener",
        )
        summary = running.stop()
    assert summary.records_ok == 22
    assert summary.records_retried == 3 and summary.records_dead_lettered == 1
    assert len(kafka.consume_all(retry_topic, expected=3)) == 3
    headers = dict(dead[0].headers() or [])
    assert headers[H_ATTEMPTS] == b"2"
    assert headers[H_CONSUMER_GROUP] == config.group_id.encode()
    assert LIBRDKAFKA_REDACTED in caplog.text, "librdkafka's conf dump reached the log"
    assert sasl.password not in caplog.text
    for shown in (repr(config), repr(running.consumer), summary.describe()):
        assert sasl.password not in shown


@pytest.mark.parametrize("wrong", ["password", "username"])
def test_wrong_password_is_a_clear_error_within_the_timeout(
    kafka: KafkaTestEnv,
    sasl: Sasl,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    wrong: str,
) -> None:
    topic = kafka.create_topic("sasl-wrong")
    bad_password = "wrong-" + unique_name("pw")
    credentials = (
        sasl.kafka_config(password=bad_password)
        if wrong == "password"
        else sasl.kafka_config(username=unique_name("nobody"))  # with the real password
    )
    secret = credentials["sasl.password"]
    config = ConsumerConfig(
        bootstrap_servers=sasl.bootstrap,
        group_id=unique_name("g"),
        topics=[topic],
        workers=1,
        connect_timeout=30,
        kafka_config={**credentials, "debug": LIBRDKAFKA_DEBUG},
    )
    caplog.set_level(logging.DEBUG)
    consumer = ProcPoolConsumer(config, functools.partial(scripted, str(tmp_path / "s")))
    started = time.monotonic()
    try:
        with pytest.raises(BrokerUnavailableError) as raised:
            consumer.open()
        elapsed = time.monotonic() - started
    finally:
        consumer.close()
    message = str(raised.value)
    assert sasl.bootstrap in message
    assert "SASL authentication error" in message and "invalid credentials" in message
    assert elapsed < 10, "an authentication failure ends the wait, not connect_timeout"
    assert consumer.worker_pids() == []
    assert LIBRDKAFKA_REDACTED in caplog.text
    assert secret not in message
    assert secret not in caplog.text


# ---------------------------------------------------------------------- command line


def test_cli_wrong_password_exits_1_with_a_clear_error(
    kafka: KafkaTestEnv, sasl: Sasl, tmp_path: Path
) -> None:
    topic = kafka.create_topic("sasl-cli-wrong")
    wrong = "wrong-" + unique_name("pw")
    env = cli_env(tmp_path / "s", PROCPOOL_KAFKA_KAFKA_CONFIG=sasl.env_value(password=wrong))
    args = [
        *("run", HANDLER, "-b", sasl.bootstrap, "-G", unique_name("g"), "-t", topic),
        *("--workers", "1", "--connect-timeout", "120", "--log-level", "DEBUG"),
        *("-X", f"debug={LIBRDKAFKA_DEBUG}"),
    ]
    started = time.monotonic()
    result = run_cli(args, env, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"procpool-kafka: error: cannot reach Kafka at {sasl.bootstrap}")
    assert "SASL authentication error" in last and "invalid credentials" in last
    assert elapsed < 60, "the broker's refusal ends the wait: no connect_timeout (120 s)"
    assert LIBRDKAFKA_REDACTED in result.stderr, "DEBUG output, librdkafka's included"
    assert wrong not in result.stdout + result.stderr


def test_cli_sasl_run_with_retry_dlq_and_metrics_never_shows_the_password(
    kafka: KafkaTestEnv, sasl: Sasl, tmp_path: Path
) -> None:
    topic = kafka.create_topic("sasl-cli", partitions=2)
    retry_topic, dlq = f"{topic}-retry", f"{topic}-dlq"
    kafka.track(retry_topic, dlq)
    kafka.produce(topic, [b"ok:"] * 20 + [b"failuntil:2:", b"fail:"])
    store = tmp_path / "store.jsonl"
    group = unique_name("g")
    port = free_port()
    env = cli_env(store, PROCPOOL_KAFKA_KAFKA_CONFIG=sasl.env_value())
    args = [
        *("run", HANDLER, "-b", sasl.bootstrap, "-G", group, "-t", topic, "--workers", "2"),
        *("--retry-topic", f"{topic}={retry_topic}", "--dlq-topic", f"{topic}={dlq}"),
        *("--create-topics", "--initial-delay", "0.3", "--max-attempts", "2"),
        *("--metrics-port", str(port), "--log-level", "DEBUG"),
        *("-X", f"debug={LIBRDKAFKA_DEBUG}", "-X", "session.timeout.ms=6000"),
    ]
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout_path.open("w") as out, stderr_path.open("w") as err:  # DEBUG fills a pipe
        process = subprocess.Popen([*CLI, *args], cwd=REPO, env=env, stdout=out, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: fetch(base + "/readyz")[0] == 200, timeout=60, message="ready")
        dead = kafka.consume_all(dlq, expected=1, timeout=60)
        wait_for(lambda: len(read_store(store)) == 21, timeout=60, message="21 handled")
        wait_for(
            lambda: (
                kafka.fully_committed(group, topic) and kafka.fully_committed(group, retry_topic)
            ),
            timeout=30,
            message="commits through the SASL listener",
        )
        wait_for(
            lambda: (
                metric(fetch(base + "/metrics")[1], "procpool_kafka_records_dead_lettered_total")
                == 1
            ),
            timeout=30,
            message="the metrics show the dead-lettered record",
        )
        responses = {path: fetch(base + path) for path in ("/metrics", "/healthz", "/readyz")}
        hosts = listening_hosts(process.pid, port)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 0, stderr_path.read_text()[-2000:]
    assert hosts == {"127.0.0.1"}, "the metrics endpoint binds to loopback by default"
    assert all(status == 200 for status, _body in responses.values()), responses
    assert metric(responses["/metrics"][1], "procpool_kafka_records_retried_total") == 2
    assert dict(dead[0].headers() or [])[H_CONSUMER_GROUP] == group.encode()
    output = stdout_path.read_text() + stderr_path.read_text()
    assert "summary: ok=21 retried=2 dead-lettered=1" in output
    assert LIBRDKAFKA_REDACTED in output, "DEBUG output, librdkafka's included"
    help_text = run_cli(["run", "--help"], env).stdout
    for shown in (output, help_text, *(body for _status, body in responses.values())):
        assert sasl.password not in shown


def test_cli_password_from_a_config_file_and_metrics_host_as_told(
    kafka: KafkaTestEnv, sasl: Sasl, tmp_path: Path
) -> None:
    topic = kafka.create_topic("sasl-toml", partitions=1)
    kafka.produce(topic, [b"ok:"] * 5 + [b"slow:4:"])  # the slow one keeps the run open
    store = tmp_path / "store.jsonl"
    port = free_port()
    settings = "\n".join(f'"{key}" = "{value}"' for key, value in sasl.kafka_config().items())
    config_file = tmp_path / "procpool.toml"
    config_file.write_text(
        f'handler = "{HANDLER}"\nbootstrap-servers = "{sasl.bootstrap}"\n'
        f'group-id = "{unique_name("g")}"\ntopic = ["{topic}"]\nworkers = 1\n'
        f'until-end = true\nlog-level = "DEBUG"\nlog-format = "json"\n'
        f'metrics-port = {port}\nmetrics-host = "0.0.0.0"\n'
        f'\n[kafka-config]\n{settings}\n"debug" = "{LIBRDKAFKA_DEBUG}"\n'
    )
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        process = subprocess.Popen(
            [*CLI, "run", "--config", str(config_file)],
            cwd=REPO,
            env=cli_env(store),
            stdout=out,
            stderr=err,
        )
    try:
        hosts = wait_for(
            lambda: process.poll() is None and listening_hosts(process.pid, port),
            timeout=60,
            message="the metrics endpoint listens",
        )
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr_path.read_text()[-2000:]
    assert hosts == {"0.0.0.0"}, "--metrics-host is honoured"
    assert len(read_store(store)) == 6
    output = stdout_path.read_text() + stderr_path.read_text()
    assert LIBRDKAFKA_REDACTED in output
    assert sasl.password not in output
