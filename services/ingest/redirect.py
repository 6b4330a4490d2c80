"""``GET /l/{code}``: the short-link redirect. No auth; answers 302 from memory when it can.

A link redirects only once its message was submitted, until it expires, on the domain it was
minted for, unless an operator took it down (``links.refusal``; docs/results.md, "Link
safety"). Links are cached (LRU) after a lookup for ``HERALD_LINK_CACHE_TTL_S``; a
``TakedownWatcher`` drops taken-down links from the cache within seconds. A link not active yet
is looked up again after ``INACTIVE_TTL_S`` (it activates when its message is submitted), and an
unknown code is remembered for a while so a scanner cannot make every request a query.
Each person's click becomes a ``link.clicked`` event in an in-memory buffer that a worker
publishes in batches: the redirect never waits for Kafka. Bot clicks (previews, prefetches,
crawlers, too fast) are folded in the buffer: one event per link, reason and day per flush,
with their ``count``, so a bot hammering a link costs one buffer entry, not one event a click
(reports counts them, it stores no row for them). If the broker is away for long and the
buffer fills, further clicks are dropped and counted (``herald_link_clicks_dropped_total``)
rather than slowing redirects down.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from services.ingest import metrics
from services.ingest.bots import classify
from services.ingest.links import CODE_PATTERN, NOT_ACTIVE, TAKEN_DOWN, WRONG_DOMAIN, refusal
from services.ingest.links_repo import LinksRepository
from shared.api import error_body
from shared.contracts import LinkClicked, LinkClickedEvent, utcnow
from shared.kafka import Outgoing, Publisher
from shared.periodic import run_periodically
from shared.topics import CLICKS

log = logging.getLogger(__name__)

NEGATIVE_TTL_S = 30.0
INACTIVE_TTL_S = 1.0  # a link not active yet: looked up at most once a second until its message is submitted


@dataclass(frozen=True, slots=True)
class Target:
    code: str
    tenant_id: str
    message_id: uuid.UUID
    link_index: int
    url: str
    contact_id: uuid.UUID | None
    campaign_id: uuid.UUID | None
    variant: str | None
    journey_id: uuid.UUID | None
    created_at: datetime
    activated_at: datetime | None
    expires_at: datetime
    domain: str | None
    taken_down_at: datetime | None


class LinkCache:
    """code → Target, an LRU in front of the links table (entries live ``ttl_s``, a link not
    active yet ``INACTIVE_TTL_S``); unknown codes cached briefly."""

    def __init__(self, repository: LinksRepository, size: int, ttl_s: float = 30.0) -> None:
        self.repository = repository
        self.size = size
        self.ttl_s = ttl_s
        self._hits: OrderedDict[str, tuple[Target, float]] = OrderedDict()
        self._missing: dict[str, float] = {}

    async def get(self, code: str) -> Target | None:
        hit = self._hits.get(code)
        if hit is not None and hit[1] > time.monotonic():
            self._hits.move_to_end(code)
            metrics.LINK_LOOKUPS.labels("cache").inc()
            return hit[0]
        missing_until = self._missing.get(code)
        if missing_until is not None and missing_until > time.monotonic():
            metrics.LINK_LOOKUPS.labels("negative_cache").inc()
            return None
        metrics.LINK_LOOKUPS.labels("database").inc()
        row = await self.repository.resolve(code)
        if row is None:
            if len(self._missing) >= 10_000:
                self._missing.clear()
            self._missing[code] = time.monotonic() + NEGATIVE_TTL_S
            return None
        target = Target(**dict(row))
        if self.size:
            ttl = self.ttl_s if target.activated_at is not None else min(self.ttl_s, INACTIVE_TTL_S)
            self._hits[code] = (target, time.monotonic() + ttl)
            self._hits.move_to_end(code)
            if len(self._hits) > self.size:
                self._hits.popitem(last=False)
        return target

    def drop(self, code: str) -> None:
        self._hits.pop(code, None)


class TakedownWatcher:
    """Every ``poll_s``, the links taken down lately are dropped from this instance's cache, so a
    takedown answers 410 within seconds whatever ``HERALD_LINK_CACHE_TTL_S``, and counted
    (``herald_link_takedowns_total``: each instance counts the takedowns it applied). A takedown
    is looked for during ``WINDOW_S`` after its time, so one whose transaction commits late is
    still seen; each is counted once."""

    WINDOW_S = 120.0

    def __init__(self, repository: LinksRepository, cache: LinkCache, poll_s: float) -> None:
        self.repository = repository
        self.cache = cache
        self.poll_s = poll_s
        self._seen: dict[tuple[str, datetime], float] = {}
        self._stop = asyncio.Event()
        self._started = False

    def stop(self) -> None:
        self._stop.set()

    async def check(self) -> int:
        """One look; returns how many takedowns were new. The first look only learns what is there."""
        rows = await self.repository.recent_takedowns(self.WINDOW_S + self.poll_s)
        now = time.monotonic()
        new = 0
        for row in rows:
            key = (row["code"], row["taken_down_at"])
            if key in self._seen:
                continue
            self._seen[key] = now
            self.cache.drop(row["code"])
            new += 1
        for key in [k for k, at in self._seen.items() if now - at > 2 * (self.WINDOW_S + self.poll_s)]:
            del self._seen[key]
        if not self._started:
            self._started = True
            return 0
        if new:
            metrics.LINK_TAKEDOWNS.inc(new)
        return new

    async def run(self) -> None:
        await run_periodically("link_takedowns", self.check, self.poll_s, self._stop, logger=log,
                               error_message="could not look for link takedowns; the cache TTL still applies",
                               error_level=logging.WARNING)


class ClickBuffer:
    """Click events waiting to be published; ``run`` publishes them in batches. Bot clicks of
    one (tenant, message, link, reason, day) are folded into one event until the next flush."""

    def __init__(self, publisher: Publisher, interval_ms: int, max_size: int) -> None:
        self.publisher = publisher
        self.interval_s = interval_ms / 1000
        self.max_size = max_size
        self._items: list[Outgoing] = []
        self._bots: dict[tuple[str, uuid.UUID, int, str, date], tuple[LinkClicked, int]] = {}
        self._stop = asyncio.Event()

    def add(self, tenant: str, click: LinkClicked) -> bool:
        """Queue one click; never blocks. False when the buffer is full (the click is dropped)."""
        if click.bot:
            key = (tenant, click.message_id, click.link_index, click.bot_reason or "",
                   click.clicked_at.astimezone(UTC).date())
            folded = self._bots.get(key)
            if folded is not None:  # one more of a bot click already buffered: no room needed
                self._bots[key] = (folded[0], folded[1] + 1)
                metrics.BOT_CLICKS_FOLDED.inc()
                return True
        if len(self) >= self.max_size:
            metrics.CLICKS_DROPPED.inc()
            return False
        if click.bot:
            self._bots[key] = (click, 1)
        else:
            self._items.append(self._event(tenant, click))
        return True

    @staticmethod
    def _event(tenant: str, click: LinkClicked) -> Outgoing:
        event = LinkClickedEvent(tenant=tenant, occurred_at=click.clicked_at, payload=click)
        return Outgoing(CLICKS, str(click.message_id), event)

    def __len__(self) -> int:
        return len(self._items) + len(self._bots)

    def stop(self) -> None:
        self._stop.set()

    async def flush(self) -> int:
        bots, self._bots = self._bots, {}
        items = self._items + [
            self._event(tenant, click if n == 1 else click.model_copy(update={"count": n}))
            for (tenant, *_), (click, n) in bots.items()
        ]
        self._items = []
        if not items:
            return 0
        try:
            await self.publisher.publish(items)
        except Exception:
            log.warning("click events not published, keeping them for the next flush", exc_info=True)
            room = max(0, self.max_size - len(self._items))
            metrics.CLICKS_DROPPED.inc(max(0, len(items) - room))
            self._items = items[:room] + self._items
            return 0
        return len(items)

    async def run(self) -> None:
        await run_periodically("click_flush", self.flush, self.interval_s, self._stop, wait_first=True, logger=log,
                               error_message="flushing click events failed")
        await self.flush()  # what is left at shutdown


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


router = APIRouter()  # what it needs is on the app's state: link_cache, clicks, settings (ingest's wire)


@router.api_route(
    "/l/{code}",
    methods=["GET", "HEAD"],
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: {"description": "Redirect to the link's URL"},
        404: {"description": "Unknown link, or one whose message was not submitted, or asked on another domain"},
        410: {"description": "Expired (link_expired) or taken down by an operator (link_taken_down)"},
    },
    tags=["links"],
)


async def follow_link(code: str, request: Request) -> Any:
    """Follow a tracked short link: 302 to its URL, and the click is recorded (bots flagged).

    Only a link whose message was submitted answers, until it expires, on the domain it was
    minted for (a tenant's own link domain: the Host header), unless an operator took it down."""
    started = time.perf_counter()
    state = request.app.state  # read directly, not through Depends: this is the hot path
    try:
        if not CODE_PATTERN.match(code):
            metrics.LINK_NOT_FOUND.labels("malformed_code").inc()
            return JSONResponse(
                error_body("link_not_found", "not a short link code (10 letters and digits)"), status_code=404
            )
        target = await state.link_cache.get(code)
        if target is None:
            metrics.LINK_NOT_FOUND.labels("unknown_code").inc()
            return JSONResponse(error_body("link_not_found", "no link with this code"), status_code=404)
        now = utcnow()
        headers = _headers(request)
        refused = refusal(activated_at=target.activated_at, expires_at=target.expires_at, domain=target.domain,
                          taken_down_at=target.taken_down_at, host=headers.get("host"), now=now)
        if refused is not None:
            metrics.LINK_REFUSED.labels(refused).inc()
            if refused in (NOT_ACTIVE, WRONG_DOMAIN):  # as an unknown code: nothing said about the link
                return JSONResponse(error_body("link_not_found", "no link with this code"), status_code=404)
            if refused == TAKEN_DOWN:
                return JSONResponse(error_body("link_taken_down", "this link was taken down"), status_code=410)
            return JSONResponse(error_body("link_expired", "this link has expired"), status_code=410)
        # "too fast" counts from the submission (the link's activation), not the acceptance
        reason = classify(request.method, headers, now, target.activated_at or target.created_at,
                          state.settings.link_bot_min_delay_s)
        agent = headers.get("user-agent")
        click = LinkClicked.model_construct(
            code=code, message_id=target.message_id, link_index=target.link_index, url=target.url,
            contact_id=target.contact_id, campaign_id=target.campaign_id, variant=target.variant,
            journey_id=target.journey_id, clicked_at=now, bot=reason is not None, bot_reason=reason,
            method="HEAD" if request.method.upper() == "HEAD" else "GET",
            user_agent=agent[:512] if agent else None,
        )
        state.clicks.add(target.tenant_id, click)
        metrics.LINK_CLICKS.labels("bot" if reason else "human").inc()
        return Response(
            status_code=302,
            headers={"Location": target.url, "Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"},
        )
    finally:
        metrics.REDIRECT_SECONDS.observe(time.perf_counter() - started)
