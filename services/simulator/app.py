"""Composition root of the gateway simulator: settings, web runners, receipt sender, signals."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from shared import logging as herald_logging
from shared.signatures import HEADER as SIGNATURE_HEADER
from shared.signatures import sign

from .core import OutcomeRates, ReceiptBatch, Simulator
from .http import build_registry, create_api_app, create_control_app
from .settings import SimulatorSettings
from .smpp import SmppFace, register_smpp_routes

log = logging.getLogger("herald.simulator")

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
SHUTDOWN_TIMEOUT_S = 5.0
LOGGED_BODY_MAX = 1000


class ReceiptSender:
    """Posts due receipts in batches, one POST at a time, from a single long-lived task.

    It sleeps until the earliest receipt is due (the simulator calls :meth:`wake` when a new
    receipt becomes the earliest), so there is no busy loop and no task per message. A failed
    POST is retried with the very same receipts until it gets an answer, so nothing is lost
    or duplicated by the simulator; submissions keep being accepted meanwhile.
    """

    def __init__(
        self,
        sim: Simulator,
        session: aiohttp.ClientSession,
        *,
        url: str,
        secret: bytes,
        batch_max: int,
        linger_s: float,
        clock: Callable[[], float] = time.time,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self._sim = sim
        self._session = session
        self._url = url
        # The receipt is signed for the gateway named by the URL (…/v1/receipts/{gateway}).
        self._gateway = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        self._secret = secret
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._clock = clock
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._wakeup = asyncio.Event()
        self._last_post = float("-inf")
        self._backlog = False
        #: The batch being posted (or waiting to be retried), if any.
        self.current: ReceiptBatch | None = None

    def wake(self) -> None:
        self._wakeup.set()

    async def _sleep_until_woken(self, timeout: float | None) -> None:
        if timeout is None:
            await self._wakeup.wait()
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        except TimeoutError:
            pass

    async def run(self) -> None:
        sim = self._sim
        while True:
            # Cleared before looking at the schedule: a wake() from here on is not missed.
            self._wakeup.clear()
            now = self._clock()
            due = sim.next_due()
            if due is None:
                await self._sleep_until_woken(None)
                continue
            # Linger between posts only when the last batch was not full: a backlog goes at once.
            start = due if self._backlog else max(due, self._last_post + self._linger_s)
            if start > now:
                await self._sleep_until_woken(start - now)
                continue
            batch = sim.take_due(now, self._batch_max)
            if batch is None:
                continue
            self._backlog = len(batch) >= self._batch_max
            self.current = batch
            try:
                await self._deliver(batch)
            finally:
                self.current = None

    async def _deliver(self, batch: ReceiptBatch) -> None:
        sim = self._sim
        body = json.dumps(batch.payload(), separators=(",", ":")).encode()
        delay = self._backoff_initial_s
        attempt = 0
        while sim.is_current(batch):
            attempt += 1
            self._last_post = self._clock()
            sim.note_post()
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self._secret, body, int(time.time()), context=self._gateway),
            }
            try:
                async with self._session.post(self._url, data=body, headers=headers) as resp:
                    status = resp.status
                    answer = await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if 200 <= status < 300:
                    sim.receipts_sent(batch)
                    if attempt > 1:
                        log.info("receipt post of %d receipts succeeded at attempt %d", len(batch), attempt)
                    return
                text = answer[:LOGGED_BODY_MAX].decode("utf-8", "replace")
                if 400 <= status < 500:
                    sim.receipts_refused(batch)
                    log.error(
                        "receipt post of %d receipts refused by %s: HTTP %d, not retried: %s",
                        len(batch),
                        self._url,
                        status,
                        text,
                    )
                    return
                problem = f"HTTP {status}: {text}"
            if not sim.is_current(batch):
                break
            sim.note_post_retry()
            log.warning(
                "receipt post of %d receipts to %s failed at attempt %d (%s); retrying in %.1fs",
                len(batch),
                self._url,
                attempt,
                problem,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max_s)
        log.info("receipt batch of %d abandoned after a stats reset", len(batch))


class SimulatorService:
    """The whole simulator process: API and control listeners plus the receipt sender.

    Implements :class:`services.simulator.http.Listener` for the ``refuse`` mode.
    """

    def __init__(
        self,
        settings: SimulatorSettings,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.sim = Simulator(
            rates=OutcomeRates(settings.delivered_rate, settings.undelivered_rate, settings.failed_rate),
            receipt_delay_ms=(settings.receipt_delay_min_ms, settings.receipt_delay_max_ms),
            rng=rng if rng is not None else random.Random(settings.seed),
        )
        self.registry = build_registry(self.sim, self)
        self._api_runner = web.AppRunner(
            create_api_app(
                self.sim,
                api_token=settings.api_token.get_secret_value(),
                registry=self.registry,
                clock=clock,
            ),
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        # SMPP face (smpp.py): listens from start() on when smpp_port is not 0; POST /control/mo.
        self.smpp: SmppFace | None = SmppFace(self.sim, settings, clock=clock) if settings.smpp_port else None
        control_app = create_control_app(self.sim, registry=self.registry, listener=self)
        if self.smpp is not None:
            register_smpp_routes(control_app, self.smpp)
        self._control_runner = web.AppRunner(
            control_app,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        self._api_site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sender: ReceiptSender | None = None
        self._sender_task: asyncio.Task[None] | None = None
        self.api_port: int = settings.port
        self.control_port: int = settings.control_port
        self._stopped = False
        self._smpp_started = False

    # -- Listener ------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._api_site is not None

    async def pause(self) -> None:
        if self.smpp is not None:
            await self.smpp.pause()  # refuse mode closes the SMPP listener and drops its binds too
        if self._api_site is None:
            return
        site, self._api_site = self._api_site, None
        await site.stop()
        server = self._api_runner.server
        connections = server.connections if server is not None else []
        # As aiohttp does at shutdown: close() wakes the idle keep-alive connections, shutdown()
        # lets a request in progress be answered (up to the timeout), then closes the socket.
        # Without this a client's pooled connection would keep being served.
        for conn in connections:
            conn.close()
        await asyncio.sleep(0)
        await asyncio.gather(*(conn.shutdown(SHUTDOWN_TIMEOUT_S) for conn in connections))
        log.warning("refuse mode: API port %d closed (%d open connections closed)", self.api_port, len(connections))

    async def resume(self) -> None:
        if self.smpp is not None and self._smpp_started:
            await self.smpp.resume()
        if self._api_site is not None:
            return
        site = web.TCPSite(self._api_runner, self.settings.host, self.api_port)
        await site.start()
        self._api_site = site
        log.warning("API port %d listening again", self.api_port)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.receipt_post_timeout_s),
        )
        self._sender = ReceiptSender(
            self.sim,
            self._session,
            url=s.receipt_url,
            secret=s.receipt_secret.get_secret_value().encode(),
            batch_max=s.receipt_batch_max,
            linger_s=s.receipt_linger_ms / 1000.0,
            clock=self._clock,
        )
        self.sim.on_new_head = self._sender.wake
        self._sender_task = asyncio.create_task(self._sender.run(), name="herald-sim-receipts")

        await self._control_runner.setup()
        control_site = web.TCPSite(self._control_runner, s.control_host, s.control_port)
        await control_site.start()
        self.control_port = self._control_runner.addresses[0][1]

        await self._api_runner.setup()
        self._api_site = web.TCPSite(self._api_runner, s.host, s.port)
        await self._api_site.start()
        self.api_port = self._api_runner.addresses[0][1]
        if self.smpp is not None:
            try:
                await self.smpp.start()
                self._smpp_started = True
            except OSError as exc:
                # Not fatal: the HTTP faces still work (e.g. a second simulator on one machine).
                log.error("SMPP face not started: cannot listen on %s:%d: %s", s.host, s.smpp_port, exc)
        log.info(
            "gateway simulator listening: api=%s:%d control=%s:%d receipts to %s",
            s.host,
            self.api_port,
            s.control_host,
            self.control_port,
            s.receipt_url,
        )

    async def stop(self) -> None:
        """Stop listening, drop pending receipts, close everything. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.smpp is not None:
            await self.smpp.stop()
        # No new submissions first; requests in progress are answered (up to the shutdown timeout).
        self._api_site = None
        if self._api_runner.server is not None:
            await self._api_runner.cleanup()
        if self._sender_task is not None:
            self._sender_task.cancel()
            try:
                await self._sender_task
            except asyncio.CancelledError:
                pass
        self.sim.on_new_head = None
        dropped = self.sim.drop_pending(self._sender.current if self._sender else None)
        log.info(
            "shutdown: dropped %d pending receipts (%d sent, %d submissions)",
            dropped,
            self.sim.c.receipts_sent,
            self.sim.c.submissions,
        )
        if self._control_runner.server is not None:
            await self._control_runner.cleanup()
        if self._session is not None:
            await self._session.close()
        log.info("gateway simulator stopped")


async def main() -> None:
    settings = SimulatorSettings()
    herald_logging.configure("simulator", settings.log_level, settings.log_format)
    log.info("settings: %s", json.dumps(settings.public_dict()))
    service = SimulatorService(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
        await stop.wait()
        log.info("stop signal received")
    finally:
        await service.stop()
