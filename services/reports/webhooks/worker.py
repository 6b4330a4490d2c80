"""The webhook worker: claims due outbox heads, posts them through one pooled aiohttp client
(names resolved through :class:`CheckedResolver`, so only allowed destinations are reached),
and writes the results back in batches. See docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver

from services.reports import metrics
from services.reports.webhooks.repository import WebhookStore
from services.reports.webhooks.rules import (
    Gate,
    Kind,
    Outcome,
    Result,
    backoff_s,
    build_headers,
    classify,
    encode,
    host_key,
)
from shared.egress import URL_INVALID, EgressPolicy, addresses_refusal, url_refusal

log = logging.getLogger(__name__)

USER_AGENT = "Herald-Webhooks/1"
SECRET_CACHE_S = 300.0
MAX_ANSWER_BYTES = 64 * 1024  # a longer answer body is not read: its connection is closed instead
DEFER_S = 1.0  # a row put back because its tenant or receiver is at its cap is due again after this


def _retry_after(value: str | None, cap: float) -> float | None:
    if value and value.strip().isdigit():
        return min(float(value.strip()), cap)
    return None


def _kind(row: Mapping[str, Any]) -> str:
    return str(row.get("kind") or Kind.STATUS.value)


class EgressRefused(OSError):
    """A webhook's host resolved to an address webhooks may not reach (shared/egress.py)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host} resolves to an address webhooks may not reach ({reason})")
        self.reason = reason


class CheckedResolver(AbstractResolver):
    """The worker client's resolver: resolves a name once and refuses the answer if any of its
    addresses may not be reached. The connector connects to exactly the addresses returned
    here (no second lookup, so a name cannot pass the check and then resolve elsewhere),
    with the URL's host name kept for the Host header and TLS SNI. Address literals never
    reach a resolver: :meth:`WebhookWorker.post` checks them first (:func:`url_refusal`)."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> Any:
        infos = await self.inner.resolve(host, port, family)  # type: ignore[arg-type]
        reason = addresses_refusal([info["host"] for info in infos], self.policy)
        if reason is not None:
            raise EgressRefused(host, reason)
        return infos

    async def close(self) -> None:
        await self.inner.close()


def make_client(timeout_s: float, concurrency: int, policy: EgressPolicy | None = None,
                proxy: str | None = None) -> aiohttp.ClientSession:
    """The one HTTP client of a worker: a pool of keep-alive connections (``concurrency`` at
    most, the posts in flight), each POST bounded as a whole by ``timeout_s`` (connect, write
    and every read together: a receiver trickling its answer cannot hold a slot longer).
    Names are resolved through :class:`CheckedResolver` (unless posts go through ``proxy``,
    which then does the egress filtering). Call it inside the event loop that uses it."""
    resolver = CheckedResolver(policy) if policy is not None and not proxy else None
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ttl_dns_cache=300, resolver=resolver),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        auto_decompress=False,
    )


class WebhookWorker:
    """Claims due outbox rows and posts them, ``concurrency`` at a time, through one pooled
    client; the results of the posts that ended since the last round trip are written back in
    one transaction (:meth:`WebhookStore.finish`) before the next claim."""

    def __init__(self, pool: asyncpg.Pool, settings: Any, *, rand: Callable[[], float] = random.random,
                 housekeeping_s: float = 5.0) -> None:
        self.store = WebhookStore(pool)
        self.s = settings
        self.rand = rand
        self.housekeeping_s = housekeeping_s
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # a post ended, or stop
        self._secrets: dict[str, tuple[bytes, float]] = {}
        self.policy = EgressPolicy.of(settings)
        self.proxy: str | None = getattr(settings, "webhook_proxy", None)
        self.gate = Gate(getattr(settings, "webhook_tenant_concurrency", settings.webhook_concurrency),
                         getattr(settings, "webhook_host_concurrency", settings.webhook_concurrency),
                         getattr(settings, "webhook_circuit_failures", 5),
                         getattr(settings, "webhook_circuit_cooldown_s", 30.0))

    def client(self) -> aiohttp.ClientSession:
        return make_client(self.s.webhook_timeout_s, self.s.webhook_concurrency, self.policy, self.proxy)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def lease_s(self) -> float:
        """Never shorter than a POST can take, or a slow post would be claimed twice."""
        return max(self.s.webhook_lease_s, 2 * self.s.webhook_timeout_s + 1)

    async def _secrets_for(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, bytes]:
        """The signing secret of each tenant of ``rows``: cached, the missing ones in one query."""
        now = time.monotonic()
        wanted = {r["tenant_id"] for r in rows}
        stale = [t for t in wanted if t not in self._secrets or now - self._secrets[t][1] >= SECRET_CACHE_S]
        if stale:
            for tenant, secret in (await self.store.secrets(stale)).items():
                self._secrets[tenant] = (secret.encode(), now)
        return {t: self._secrets[t][0] for t in wanted}

    async def post(self, client: aiohttp.ClientSession, row: Mapping[str, Any], secret: bytes) -> Result:
        """Post one claimed row; say what to write back (nothing is written here)."""
        url, attempt, kind = row["url"], row["attempts"], _kind(row)
        refusal = url_refusal(url, self.policy)
        if refusal == URL_INVALID:
            metrics.WEBHOOK_POSTS.labels(kind, Outcome.DEAD.value).inc()
            return Result(row, Outcome.DEAD, None, "only http and https URLs with a host are posted", reason="invalid_url")
        if refusal is not None:  # queued before the rule, or under other settings: never posted
            metrics.WEBHOOK_POSTS.labels(kind, Outcome.DEAD.value).inc()
            return Result(row, Outcome.DEAD, None, f"destination refused: {refusal}", reason=refusal)
        payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
        body = encode(payload)
        headers = build_headers(secret, body, str(row["event_id"]), attempt, int(time.time()))
        started = time.monotonic()
        status_code: int | None = None
        retry_after: str | None = None
        try:
            async with client.post(url, data=body, headers=headers, allow_redirects=False,
                                   proxy=self.proxy) as response:
                status_code = response.status
                retry_after = response.headers.get("Retry-After")
                if response.content_length is not None and response.content_length <= MAX_ANSWER_BYTES:
                    await response.read()  # read to the end, so the connection goes back to the pool
            outcome = classify(status_code)
            reason = "ok" if outcome is Outcome.DELIVERED else f"http_{status_code}"
            error = None if outcome is Outcome.DELIVERED else f"HTTP {status_code}"
        except TimeoutError as exc:
            outcome, reason, error = Outcome.RETRY, "timeout", f"timeout ({type(exc).__name__})"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, EgressRefused):  # the name resolved to a refused address
                metrics.WEBHOOK_POSTS.labels(kind, Outcome.DEAD.value).inc()
                return Result(row, Outcome.DEAD, None, f"destination refused: {exc.os_error}"[:300],
                              reason=exc.os_error.reason)
            outcome, reason, error = Outcome.RETRY, "connection", f"ConnectError: {exc}"[:300]
        except (aiohttp.ClientError, OSError) as exc:
            outcome, reason, error = Outcome.RETRY, "connection", f"{type(exc).__name__}: {exc}"[:300]
        metrics.WEBHOOK_SECONDS.labels(outcome.value).observe(time.monotonic() - started)
        metrics.WEBHOOK_POSTS.labels(kind, outcome.value).inc()
        if outcome is Outcome.DELIVERED:
            occurred = payload.get("occurred_at") or payload.get("received_at")
            if occurred:
                lag = time.time() - datetime.fromisoformat(occurred).timestamp()
                metrics.WEBHOOK_LAG.observe(max(0.0, lag))
            return Result(row, outcome, status_code, None)
        if outcome is Outcome.DEAD:
            return Result(row, outcome, status_code, error or "refused",
                          reason="redirect" if status_code and status_code < 400 else "refused")
        metrics.WEBHOOKS_FAILED_ATTEMPTS.labels("http_5xx" if reason.startswith("http_5") else reason).inc()
        if attempt >= self.s.webhook_max_attempts:
            return Result(row, Outcome.DEAD, status_code, f"{error} after {attempt} attempts", reason="exhausted")
        delay = backoff_s(attempt, self.s.webhook_backoff_base_s, self.s.webhook_backoff_max_s,
                          self.s.webhook_backoff_jitter, self.rand)
        hinted = _retry_after(retry_after, self.s.webhook_backoff_max_s) if status_code in (429, 503) else None
        return Result(row, outcome, status_code, error or reason, delay_s=max(delay, hinted or 0.0))

    async def _post_logged(self, client: aiohttp.ClientSession, row: Mapping[str, Any], secret: bytes) -> Result | None:
        result: Result | None = None
        try:
            result = await self.post(client, row, secret)
            return result
        except Exception:
            # the lease runs out and the row is posted again (receivers deduplicate by event id)
            log.exception("%s webhook delivery failed", _kind(row), extra={"event_id": str(row["event_id"])})
            return None
        finally:
            self._ended(row, result)

    def _ended(self, row: Mapping[str, Any], result: Result | None) -> None:
        """Give the post's slots back and feed the receiver's circuit."""
        failed: bool | None = None
        if result is not None:
            if result.outcome is Outcome.RETRY or result.reason == "exhausted":
                failed = True
            elif result.status_code is not None:
                failed = False  # it answered (2xx, or a refusal: the receiver is up)
        now = time.monotonic()
        host = host_key(row["url"])
        if self.gate.done(row["tenant_id"], host, failed, now):
            metrics.WEBHOOK_CIRCUITS_OPENED.inc()
            log.warning("webhook circuit opened", extra={"host": host.rsplit(":", 1)[0],
                                                          "cooldown_s": self.gate.cooldown_s})
        metrics.WEBHOOK_CIRCUITS_OPEN.set(self.gate.open_circuits(now))

    def _admit(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Result]]:
        """Split claimed rows into those to post now and those put back unposted (tenant or
        receiver at its cap of posts in flight, or the receiver's circuit open)."""
        now = time.monotonic()
        go: list[Mapping[str, Any]] = []
        later: list[Result] = []
        for row in rows:
            verdict = self.gate.admit(row["tenant_id"], host_key(row["url"]), now)
            if verdict is None:
                go.append(row)
                continue
            why, wait = verdict
            metrics.WEBHOOKS_DEFERRED.labels(why).inc()
            later.append(Result(row, Outcome.DEFER, None, why, delay_s=max(wait, DEFER_S)))
        return go, later

    async def write(self, results: list[Result]) -> list[Result]:
        """Write a batch of results back (one transaction), then count and log them. Returns
        those whose rows were locked elsewhere, to write again."""
        if not results:
            return []
        try:
            later = await self.store.finish(results)
        except Exception:
            # their leases run out and they are posted again (receivers deduplicate by event id)
            log.exception("recording webhook results failed", extra={"rows": len(results)})
            return []
        waiting = {id(r) for r in later}
        for r in results:
            if id(r) in waiting:
                continue
            if r.outcome is Outcome.DELIVERED:
                metrics.WEBHOOKS_DELIVERED.inc()
            elif r.outcome is Outcome.DEAD:
                metrics.WEBHOOKS_DEAD_LETTERS.labels(r.reason or "refused").inc()
                row = r.row
                log.warning("%s webhook dead-lettered", _kind(row), extra={
                    "message_id": str(row["message_id"]), "event_id": str(row["event_id"]), "seq": row["seq"],
                    "reason": r.reason, "error": r.error, "host": urlsplit(row["url"]).hostname,
                    "attempts": row["attempts"],
                })
        return later

    async def _start(self, client: aiohttp.ClientSession, rows: Sequence[Mapping[str, Any]],
                     spawn: Callable[[Any], None]) -> list[Result]:
        """Start posting the claimed rows that may go now; return the others (deferred), to write."""
        if not rows:
            return []
        try:
            secrets = await self._secrets_for(rows)
        except Exception:
            log.exception("reading webhook signing secrets failed")  # the claimed rows' leases run out
            return []
        go, later = self._admit(rows)
        for row in go:
            spawn(self._post_logged(client, row, secrets[row["tenant_id"]]))
        return later

    async def run_once(self, client: aiohttp.ClientSession | None = None) -> int:
        """Claim what is due now, post it all and write the results (tests, and a manual drain)."""
        own = client is None
        client = client or self.client()
        try:
            rows = await self.store.claim(self.s.webhook_concurrency, self.lease_s)
            posts: list[Any] = []
            deferred = await self._start(client, rows, posts.append)
            left = [r for r in await asyncio.gather(*posts) if r is not None] + deferred
            deadline = time.monotonic() + self.lease_s
            while left and time.monotonic() < deadline:
                left = await self.write(left)
                if left:
                    await asyncio.sleep(0.01)
            return len(rows)
        finally:
            if own:
                await client.close()

    async def _housekeeping(self) -> None:
        try:
            await self.store.prune(self.s.webhook_retention_h)
            metrics.WEBHOOK_OUTBOX_DEPTH.set(await self.store.depth())
        except Exception:
            log.exception("webhook outbox housekeeping failed")

    async def run(self) -> None:
        client = self.client()
        inflight: set[asyncio.Task[Result | None]] = set()
        ended: list[Result] = []  # posted, not written back yet

        def collect(task: asyncio.Task[Result | None]) -> None:
            inflight.discard(task)
            if not task.cancelled() and task.exception() is None and task.result() is not None:
                ended.append(task.result())  # type: ignore[arg-type]
            self._wake.set()

        def spawn(post: Any) -> None:
            task = asyncio.create_task(post)
            inflight.add(task)
            task.add_done_callback(collect)

        last_housekeeping = 0.0
        timed_out = True
        batch = max(1, self.s.webhook_concurrency // 4)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if time.monotonic() - last_housekeeping >= self.housekeeping_s:
                    last_housekeeping = time.monotonic()
                    await self._housekeeping()
                # the posts that ended since the last round trip, written together (their keys'
                # next rows become claimable); more end meanwhile, so batches grow with the load
                if ended:
                    done, ended[:] = list(ended), []
                    ended += await self.write(done)
                free = self.s.webhook_concurrency - len(inflight)
                # claim in batches when busy: one claim query per freed slot would cost more than the posts
                if free > 0 and (timed_out or free >= batch or not inflight):
                    try:
                        rows = await self.store.claim(free, self.lease_s)
                    except Exception:
                        log.exception("claiming webhooks failed")
                        rows = []
                    ended += await self._start(client, rows, spawn)
                # wake when a post ends (its result to write, its key's next seq to claim), on stop, or to poll
                try:  # results left to write (rows locked elsewhere for a moment): look again soon
                    await asyncio.wait_for(self._wake.wait(), timeout=min(self.s.webhook_poll_interval_s, 0.02)
                                           if ended else self.s.webhook_poll_interval_s)
                    timed_out = False
                except TimeoutError:
                    timed_out = True
        finally:
            if inflight:
                await asyncio.wait(inflight, timeout=self.s.webhook_timeout_s + 1)
                for task in list(inflight):
                    task.cancel()
            left, deadline = list(ended), time.monotonic() + self.s.webhook_timeout_s
            while left and time.monotonic() < deadline:  # what was posted is recorded before stopping
                left = await self.write(left)
                if left:
                    await asyncio.sleep(0.01)
            await client.close()
