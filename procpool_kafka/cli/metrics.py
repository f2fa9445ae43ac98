"""The metrics endpoint of a run: served as --metrics-host/--metrics-port say, an address
that cannot be bound reported as a UsageError naming the flag and where its value came from."""

from __future__ import annotations

import logging
import socket
from typing import Any

from procpool_kafka.cli.errors import UsageError
from procpool_kafka.consumer import ProcPoolConsumer
from procpool_kafka.metrics_server import MetricsServer

log = logging.getLogger("procpool_kafka.cli")


def health_stale_after(revoke_timeout: float) -> float:
    """How old the published state may get before /healthz fails: longer than a drain's
    worst case (revoke_timeout, the 5 s settle, a 10 s sync commit) with a margin."""
    return max(30.0, revoke_timeout + 30.0)


def start_metrics_server(
    consumer: ProcPoolConsumer,
    values: dict[str, Any],
    where_from: dict[str, str],
    revoke_timeout: float,
) -> MetricsServer:
    """Serve metrics as --metrics-host/--metrics-port say; UsageError naming them if not."""
    server = MetricsServer(
        consumer.snapshot,
        values["metrics_host"],
        values["metrics_port"],
        stale_after=health_stale_after(revoke_timeout),
    )
    try:
        server.start()
    except OSError as error:
        if isinstance(error.__cause__, socket.gaierror):
            raise UsageError(
                f"--metrics-host (from {where_from['metrics_host']}): cannot resolve "
                f"{values['metrics_host']!r}: {error.__cause__.strerror}"
            ) from None
        raise UsageError(
            f"--metrics-port (from {where_from['metrics_port']}): {error.strerror or error}"
        ) from None
    host, port = server.address
    log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, port)
    return server
