"""Ops surfaces stay off the public API port: /metrics (volumes and revenue of every tenant),
/healthz and /readyz are served on each service's ops port (HERALD_OPS_PORT) and nowhere else;
/docs, /redoc and /openapi.json only where HERALD_API_DOCS is on. Real processes, real ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald_tools.stack import Ports, Stack

pytestmark = pytest.mark.e2e

DOCS = ("/docs", "/redoc", "/openapi.json")
OPS = ("/metrics", "/healthz", "/readyz")


@pytest.fixture(scope="module")
def ops_stack(env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """ingest, scheduler and reports with the API docs off (the production default)."""
    s = Stack(env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_API_DOCS": "false"}, ports=Ports.random(),
              log_dir=Path(tmp_path_factory.mktemp("logs")))
    for name in ("ingest", "scheduler", "reports"):
        s.start(name)
    try:
        s.wait_ready(90)
        yield s
    finally:
        s.stop()


def test_the_api_ports_serve_neither_metrics_nor_health_nor_docs(ops_stack: Stack) -> None:
    for name in ("ingest", "reports"):
        api = ops_stack.url(name)
        for path in (*OPS, *DOCS):
            r = httpx.get(api + path, timeout=10)
            assert r.status_code == 404, f"{name} API port answers {path} with {r.status_code}"
        assert httpx.get(api + "/v1/messages/00000000-0000-0000-0000-000000000000", timeout=10).status_code == 401


def test_the_ops_ports_serve_metrics_and_health_and_nothing_else(ops_stack: Stack) -> None:
    for name in ("ingest", "scheduler", "reports"):
        ops = ops_stack.ops_url(name)
        r = httpx.get(ops + "/metrics", timeout=10)
        assert r.status_code == 200 and "herald_event_loop_lag_seconds" in r.text, name
        assert httpx.get(ops + "/healthz", timeout=10).json() == {"status": "ok"}
        r = httpx.get(ops + "/readyz", timeout=10)
        assert (r.status_code, r.json()["status"], r.json()["checks"]["database"]) == (200, "ready", True), name
        for path in (*DOCS, "/v1/messages/00000000-0000-0000-0000-000000000000", "/v1/messages"):
            assert httpx.get(ops + path, timeout=10).status_code == 404, f"{name} ops port answers {path}"
    # the scheduler has no API: it opens its ops port and nothing else
    with pytest.raises(httpx.ConnectError):
        httpx.get(ops_stack.url("scheduler") + "/healthz", timeout=10)


def test_the_docs_are_served_when_turned_on(ops_stack: Stack) -> None:
    second = ops_stack.start("ingest", extra_env={"HERALD_API_DOCS": "true"})
    try:
        ops_stack.wait_ready(90, processes=[second])
        api = f"http://127.0.0.1:{second.port}"
        page = httpx.get(api + "/docs", timeout=10)
        assert page.status_code == 200 and "cdn" not in page.text
        # Swagger UI's script comes from the service itself (it works offline)
        assert httpx.get(api + "/docs/assets/swagger-ui-bundle.js", timeout=10).status_code == 200
        schema = httpx.get(api + "/openapi.json", timeout=10).json()
        assert "/v1/messages" in schema["paths"] and not {"/metrics", "/healthz", "/readyz"} & set(schema["paths"])
        assert httpx.get(api + "/metrics", timeout=10).status_code == 404
    finally:
        ops_stack.stop_process(second)
        ops_stack.processes.remove(second)
