"""HTTP face of the gateway simulator (aiohttp.web).

Two applications share one :class:`~services.simulator.core.Simulator`:

* the **API** app (``/v1/sms``, ``/v1/sms/batch``): what Herald's dispatcher talks to, behind a
  bearer token; its listener is closed in ``refuse`` mode;
* the **control** app (``/control``, ``/stats``): for tests and operators, no auth, loopback
  only, never closed.

Both serve ``/metrics`` and ``/healthz``. Handlers are kept light: no per-request logging above
DEBUG and no task per message.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.logging import mask_phone

from .core import (
    MODES,
    ControlError,
    RequestError,
    Simulator,
    client_ref_of,
    parse_batch,
    parse_control,
    parse_submit,
)
from .twilio import register_twilio

log = logging.getLogger("herald.simulator.http")

#: Large enough for a batch of 1000 long messages.
CLIENT_MAX_SIZE = 8 * 1024 * 1024
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SIM_KEY: web.AppKey[Simulator] = web.AppKey("simulator", Simulator)


class Listener(Protocol):
    """The API port's listening socket, as the control app sees it (implemented in ``app.py``)."""

    @property
    def listening(self) -> bool: ...

    async def pause(self) -> None:
        """Close the listening socket and the open connections: new connections are refused."""

    async def resume(self) -> None:
        """Listen again on the same address. May raise ``OSError``."""


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("invalid_request", "the body is not valid JSON") from None


# --------------------------------------------------------------------------------------------
# Metrics


class SimulatorCollector(Collector):
    """Reads the simulator's counters at scrape time, so handlers pay nothing for metrics."""

    def __init__(self, sim: Simulator, listening: Callable[[], bool | None]) -> None:
        self._sim = sim
        self._listening = listening

    def collect(self) -> Iterator[Metric]:
        sim = self._sim
        c = sim.c
        yield CounterMetricFamily("herald_sim_submissions", "Accepted submissions", value=c.submissions)
        dup = GaugeMetricFamily("herald_sim_client_refs", "Distinct client_refs seen", labels=["kind"])
        dup.add_metric(["all"], sim.unique_client_refs)
        dup.add_metric(["duplicated"], sim.duplicated_client_refs)
        yield dup
        rejected = CounterMetricFamily("herald_sim_rejected", "Refused submissions", labels=["code"])
        for code, n in sorted(c.rejected.items()):
            rejected.add_metric([code], n)
        yield rejected
        outcomes = CounterMetricFamily("herald_sim_outcomes", "Outcomes drawn at acceptance", labels=["outcome"])
        sent = CounterMetricFamily(
            "herald_sim_receipts_sent", "Receipts acknowledged by the receiver", labels=["outcome"]
        )
        for outcome, n in c.by_outcome.items():
            outcomes.add_metric([outcome], n)
            sent.add_metric([outcome], c.sent_by_outcome[outcome])
        yield outcomes
        yield sent
        yield GaugeMetricFamily(
            "herald_sim_receipts_pending", "Receipts not yet acknowledged", value=sim.receipts_pending
        )
        yield CounterMetricFamily("herald_sim_receipt_posts", "Receipt POSTs attempted", value=c.receipt_posts)
        yield CounterMetricFamily(
            "herald_sim_receipt_post_retries", "Receipt POSTs retried", value=c.receipt_post_retries
        )
        yield CounterMetricFamily(
            "herald_sim_receipt_failed_posts", "Receipt POSTs answered 4xx", value=c.receipts_failed_posts
        )
        mode = GaugeMetricFamily("herald_sim_mode", "Current failure mode (1 = active)", labels=["mode"])
        for name in MODES:
            mode.add_metric([name], 1.0 if sim.failure.mode == name else 0.0)
        yield mode
        listening = self._listening()
        if listening is not None:
            yield GaugeMetricFamily(
                "herald_sim_api_listening", "Whether the API port accepts connections", value=1.0 if listening else 0.0
            )


def build_registry(sim: Simulator, listener: Listener | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SimulatorCollector(sim, lambda: listener.listening if listener else None))
    return registry


def _common_routes(app: web.Application, registry: CollectorRegistry) -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)


# --------------------------------------------------------------------------------------------
# API app


def create_api_app(
    sim: Simulator,
    *,
    api_token: str,
    registry: CollectorRegistry,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    expected = f"Bearer {api_token}".encode()
    debug = log.isEnabledFor(logging.DEBUG)

    def reject(request: web.Request, err: RequestError) -> web.Response:
        sim.count_rejection(err.code)
        resp = error_response(err.status, err.code, err.message)
        if err.status == 503 and err.code == "unavailable":
            resp.headers["Retry-After"] = "1"  # "try again later": nothing was taken
        if sim.failure.mode == "refuse":
            resp.force_close()
        return resp

    async def admit(request: web.Request) -> web.Response | None:
        """Auth and failure mode, common to every /v1 route. A response means: stop here."""
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            sim.count_rejection("unauthorized")
            resp = error_response(401, "unauthorized", "a valid 'Authorization: Bearer <token>' is required")
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        gate = sim.gate()
        if gate.reject is not None:
            if gate.delay_s:
                await asyncio.sleep(gate.delay_s)
            return reject(request, gate.reject)
        return None

    async def answer_late(request: web.Request, response: web.Response) -> web.Response:
        """Slow mode: the submission is taken at once and only its answer waits, so a client that
        gives up waiting has lost an answer, not a message (its lookup finds it)."""
        delay = sim.gate().delay_s
        if delay:
            await asyncio.sleep(delay)
        return response

    def accept_one(obj: Any) -> dict[str, Any]:
        req = parse_submit(obj)  # raises RequestError
        failure = sim.roll_partial_failure()
        if failure is not None:
            raise failure
        sub = sim.submit(req, clock())
        if debug:
            log.debug("accepted id=%s client_ref=%s to=%s", sub.id, sub.client_ref, mask_phone(sub.to))
        return {"id": sub.id, "status": "accepted", "client_ref": sub.client_ref}

    async def submit(request: web.Request) -> web.Response:
        early = await admit(request)
        if early is not None:
            return early
        try:
            answer = accept_one(await _read_json(request))
        except RequestError as err:
            return reject(request, err)
        after = sim.gate().after_accept
        return await answer_late(request, reject(request, after) if after is not None else web.json_response(answer))

    async def submit_batch(request: web.Request) -> web.Response:
        early = await admit(request)
        if early is not None:
            return early
        try:
            messages = parse_batch(await _read_json(request))
        except RequestError as err:
            return reject(request, err)
        results: list[dict[str, Any]] = []
        for obj in messages:
            try:
                results.append(accept_one(obj))
            except RequestError as err:
                sim.count_rejection(err.code)
                results.append({"client_ref": client_ref_of(obj), "error": err.to_json()})
        after = sim.gate().after_accept
        if after is not None:  # fail_after_accept: every message was taken, the answer is lost
            return await answer_late(request, reject(request, after))
        return await answer_late(request, web.json_response({"results": results}))

    async def lookup(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            sim.count_rejection("unauthorized")
            return error_response(401, "unauthorized", "a valid 'Authorization: Bearer <token>' is required")
        client_ref = request.query.get("client_ref")
        if not client_ref:
            return error_response(400, "invalid_request", "the client_ref query parameter is required")
        return web.json_response({"messages": [s.to_json() for s in sim.lookup(client_ref)]})

    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[SIM_KEY] = sim
    app.router.add_post("/v1/sms", submit)
    app.router.add_post("/v1/sms/batch", submit_batch)
    app.router.add_get("/v1/sms", lookup)
    register_twilio(app, sim, registry=registry, clock=clock)  # Twilio's Messages API: twilio.py
    _common_routes(app, registry)
    return app


# --------------------------------------------------------------------------------------------
# Control app


def create_control_app(
    sim: Simulator,
    *,
    registry: CollectorRegistry,
    listener: Listener | None = None,
) -> web.Application:
    lock = asyncio.Lock()

    def current() -> dict[str, Any]:
        out = sim.config()
        out["listening"] = listener.listening if listener is not None else None
        return out

    async def get_control(request: web.Request) -> web.Response:
        return web.json_response(current())

    async def post_control(request: web.Request) -> web.Response:
        try:
            update = parse_control(await _read_json(request))
        except RequestError as err:
            return error_response(400, err.code, err.message)
        except ControlError as err:
            return error_response(400, "invalid_control", str(err))
        async with lock:
            if update.mode is not None and listener is not None:
                refusing = sim.failure.mode == "refuse"
                try:
                    if update.mode.mode == "refuse" and not refusing:
                        await listener.pause()
                    elif update.mode.mode != "refuse" and refusing:
                        await listener.resume()
                except OSError as exc:
                    log.error("control: could not listen again on the API port: %s", exc)
                    return error_response(500, "listen_failed", f"could not listen again: {exc}")
            sim.apply(update)
        log.info("control: now %s", json.dumps(sim.config()))
        return web.json_response(current())

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(sim.stats())

    async def client_refs(request: web.Request) -> web.Response:
        return web.json_response({"client_refs": sim.client_ref_counts()})

    async def submissions(request: web.Request) -> web.Response:
        """Every face's submissions for one client_ref, with the validity each came with."""
        client_ref = request.query.get("client_ref")
        if not client_ref:
            return error_response(400, "invalid_request", "the client_ref query parameter is required")
        return web.json_response({"messages": [s.to_json() for s in sim.lookup(client_ref)]})

    async def timeline(request: web.Request) -> web.Response:
        per_second = sim.timeline()
        return web.json_response(
            {"seconds": [{"second": s, "submissions": n, "segments": segs} for s, (n, segs) in per_second.items()]}
        )

    async def reset(request: web.Request) -> web.Response:
        pending = sim.receipts_pending
        submissions = sim.c.submissions
        sim.reset()
        log.info("stats reset: forgot %d submissions and %d pending receipts", submissions, pending)
        return web.json_response(sim.stats())

    app = web.Application()
    app[SIM_KEY] = sim
    app.router.add_get("/control", get_control)
    app.router.add_post("/control", post_control)
    app.router.add_get("/stats", stats)
    app.router.add_get("/stats/client_refs", client_refs)
    app.router.add_get("/stats/submissions", submissions)
    app.router.add_get("/stats/timeline", timeline)
    app.router.add_post("/stats/reset", reset)
    _common_routes(app, registry)
    return app
