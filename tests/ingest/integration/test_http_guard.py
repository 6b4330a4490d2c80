"""The HTTP trust boundary of a real ingest process: an anonymous or slow client cannot make it
read, hold or parse a body it will refuse (shared/http_guard.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from herald_tools.stack import Ports, Process, Stack
from tests.conftest import Tenant, make_tenant

pytestmark = pytest.mark.integration
BODY_TIMEOUT_S = 2
MAX_CONCURRENCY = 12
BIG = 150 * 1024 * 1024


@pytest.fixture(scope="module")
def ingest(env, tmp_path_factory) -> Iterator[Process]:
    stack = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
             "HERALD_HTTP_MAX_CONCURRENCY": str(MAX_CONCURRENCY)},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("guard-logs")),
    )
    process = stack.start("ingest")
    try:
        stack.wait_ready(90, processes=[process])
        yield process
    finally:
        stack.stop()


@pytest.fixture(scope="module")
async def tenant(pool) -> Tenant:
    return await make_tenant(pool)


def rss_mb(process: Process) -> float:
    for line in Path(f"/proc/{process.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def request_head(port: int, path: str, headers: dict[str, str]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection and send the request line and headers only."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"POST {path} HTTP/1.1", "Host: ingest", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    writer.write("\r\n".join(lines).encode())
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader, timeout_s: float) -> tuple[int, dict]:
    async with asyncio.timeout(timeout_s):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        body = await reader.readexactly(length)
    return status, json.loads(body)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def test_a_huge_body_without_a_key_is_refused_before_it_is_read(ingest: Process) -> None:
    before = rss_mb(ingest)
    # Declared: refused from the headers alone, whatever the key.
    reader, writer = await request_head(ingest.port, "/v1/messages", {"Content-Type": "application/json",
                                                                       "Content-Length": str(BIG)})
    assert await read_answer(reader, 5) == (413, {"error": {
        "code": "body_too_large", "message": "the body of this request is limited to 65536 bytes", "details": []}})
    await close(writer)
    # Chunked (no length): no key, so a 401 before any of the body is read.
    reader, writer = await request_head(ingest.port, "/v1/messages/batch", {"Content-Type": "application/json",
                                                                             "Transfer-Encoding": "chunked"})
    status, body = await read_answer(reader, 5)
    assert (status, body["error"]["code"]) == (401, "missing_api_key")
    # The client goes on sending its 150 MB; nothing of it is kept.
    chunk = b"[" + b" " * (1024 * 1024 - 2) + b"]"
    sent = 0
    try:
        while sent < BIG:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            sent += len(chunk)
    except (ConnectionError, OSError):
        pass  # the server closed the connection: what it should do
    await close(writer)
    assert rss_mb(ingest) - before < 30, f"ingest grew from {before:.0f} to {rss_mb(ingest):.0f} MB"


async def test_a_bad_key_is_refused_before_the_body_is_read(ingest: Process) -> None:
    reader, writer = await request_head(ingest.port, "/v1/messages", {
        "Content-Type": "application/json", "Content-Length": "60000", "Authorization": "Bearer hk_nope_nope"})
    status, body = await read_answer(reader, 5)  # no body sent at all
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    await close(writer)


async def test_a_chunked_body_over_the_route_limit_is_413(ingest: Process, tenant: Tenant) -> None:
    reader, writer = await request_head(ingest.port, "/v1/messages", {
        "Content-Type": "application/json", "Transfer-Encoding": "chunked", **tenant.headers})
    chunk = b" " * 16384
    try:
        for _ in range(8):  # 128 KiB against a 64 KiB limit
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    status, body = await read_answer(reader, 10)
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    await close(writer)


async def test_a_trickled_body_is_cut_off(ingest: Process, tenant: Tenant) -> None:
    reader, writer = await request_head(ingest.port, "/v1/messages", {
        "Content-Type": "application/json", "Content-Length": "200", **tenant.headers})
    started = time.monotonic()
    writer.write(b'{"to": "+3460')
    await writer.drain()
    status, body = await read_answer(reader, BODY_TIMEOUT_S + 10)
    assert (status, body["error"]["code"]) == (408, "body_timeout")
    assert time.monotonic() - started < BODY_TIMEOUT_S + 5
    await close(writer)


async def test_connections_beyond_the_bound_get_503_and_a_normal_send_still_works(ingest: Process, tenant: Tenant) -> None:
    held = []
    for _ in range(MAX_CONCURRENCY - 1):  # uvicorn counts the newcomer too: one more makes the bound
        reader, writer = await request_head(ingest.port, "/v1/messages", {
            "Content-Type": "application/json", "Content-Length": "200", **tenant.headers})
        writer.write(b"{")
        await writer.drain()
        held.append((reader, writer))
    await asyncio.sleep(0.3)
    reader, writer = await request_head(ingest.port, "/v1/messages", {"Content-Type": "application/json",
                                                                       "Content-Length": "2", **tenant.headers})
    writer.write(b"{}")
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert int(head.split(b" ", 2)[1]) == 503
    await close(writer)
    for r, w in held:  # each is cut off by the body timeout
        status, _ = await read_answer(r, BODY_TIMEOUT_S + 10)
        assert status == 408
        await close(w)
    # Slots are free again: a real send is accepted.
    body = json.dumps({"to": "+34600123456", "body": "guard ok", "type": "transactional"}).encode()
    reader, writer = await request_head(ingest.port, "/v1/messages", {
        "Content-Type": "application/json", "Content-Length": str(len(body)), **tenant.headers})
    writer.write(body)
    await writer.drain()
    status, answer = await read_answer(reader, 10)
    assert status == 202, answer
    await close(writer)
