"""The campaign launcher: streams a campaign's audience from PostgreSQL into Kafka.

Any ingest instance runs one. It claims a campaign to fan out (a lease in the campaigns
table), reads the segment's contacts a page at a time in contact id order (never the whole
audience in memory), renders each contact's variant, publishes the page to the bulk lane
(or the priority lane for a transactional campaign) and only then stores the page's cursor.
Every page renews the lease and re-reads the state, so a pause or cancel stops the fan-out
within one page; the scheduler holds (pause) or suppresses (cancel) what was already
published. A launcher that dies is replaced by another after the lease runs out; it
re-publishes at most one page, with the same message ids.

One tenant cannot stall the others: claims go to the tenant claimed longest ago (then its
campaign claimed longest ago), a claim works at most ``slice_s`` before letting the campaign
go back in line, every page query has a statement timeout, and a campaign whose attempt fails
is retried with backoff and, after ``max_attempts`` failures in a row, ends ``failed`` with
the reason (an outage of PostgreSQL or Kafka is not counted against it).

Nor can one tenant's audience fill the lanes ahead of the others' (campaigns/pacing.py): before
each page the launcher reads how many of the tenant's campaign messages are still in flight (published,
not yet handled by the dispatcher); at the tenant's bound it waits up to ``pace_wait_s`` for room,
then lets the campaign go back in line, so the next claim goes to another tenant.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from services.ingest.audience import segments as seg
from services.ingest.audience.contacts_repo import AudienceMember, AudienceRepository
from services.ingest.audience.templates import Template, TemplateError, render
from services.ingest.campaigns.domain import (
    AbTest,
    Variant,
    assign,
    build_message,
    message_id_for,
    next_attempt_at,
    pinned_versions,
)
from services.ingest.campaigns.pacing import UNBOUNDED, InFlightBound, InFlightRepository
from services.ingest.campaigns.repository import CampaignRepository
from services.ingest.domain import Rejection, Route, route
from services.ingest.links import DEFAULT_TTL, LinkRecord, records, swap_codes, track_message
from services.ingest.links_repo import LinksRepository
from services.ingest.repository import IngestRepository
from services.ingest.service import accepted_event, failed_status
from shared.contracts import utcnow
from shared.erasure import NO_KEYS, ErasureKeys
from shared.geo import GeoPolicy, GeoRules
from shared.kafka import Outgoing, Publisher, error_kind
from shared.periodic import run_periodically
from shared.phones import region_of_e164
from shared.senders import Refusal, SenderBook, check_named
from shared.senders import load_rules as load_sender_rules
from shared.statuses import MessageType

log = logging.getLogger(__name__)

FANNED_OUT = Counter("herald_campaign_messages_published_total", "Campaign messages published by the launcher")
RENDER_FAILED = Counter("herald_campaign_render_failures_total", "Contacts skipped because their text could not be rendered")
PAUSED_FOR_SENDER = Counter("herald_campaign_paused_for_sender_total",
                            "Campaigns the launcher paused because the sender they name can no longer send")
REFUSED = Counter("herald_campaign_contacts_refused_total",
                  "Campaign contacts refused by the per-message checks (geo permissions, sender registry, sender pool), "
                  "by reason code; each gets a failed status", ["reason"])


@dataclass(frozen=True)
class PageChecks:
    """What a page's messages are checked against, read again for every page (a suspension, a
    new rate or a narrowed geo permission applies from the next page): the tenant's geo
    permissions, its sender registry (None: the campaign names no sender), and for a pool
    campaign (pool, recipient) -> the recipient's sticky sender."""

    geo: GeoPolicy | None = None
    senders: SenderBook | None = None
    sticky: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class PageOut:
    """A page's accepted events, its short links to store, and the failed statuses of the
    contacts the checks refused."""

    accepted: list[Outgoing] = field(default_factory=list)
    links: list[LinkRecord] = field(default_factory=list)
    refused: list[Outgoing] = field(default_factory=list)
FAILED_ATTEMPTS = Counter(
    "herald_campaign_failed_attempts_total", "Failed attempts to fan a campaign out, by outcome (retry or failed)", ["outcome"]
)
PAGE_SECONDS = Histogram(
    "herald_campaign_page_seconds", "Time to read, render and publish one page of a campaign's audience",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PACED = Counter(
    "herald_campaign_paced_total",
    "Times a launcher found a tenant at its bound of campaign messages in flight, by outcome: waited (room came "
    "within pace_wait_s) or yielded (the campaign went back in line)", ["outcome"],
)
PACED_SECONDS = Counter("herald_campaign_paced_seconds_total", "Time launchers waited for a tenant's campaign messages in flight to drain")
IN_FLIGHT = Gauge("herald_campaign_in_flight", "Campaign messages in flight of the tenant whose page this launcher published last")


@dataclass(frozen=True)
class Plan:
    """What the launcher needs of a claimed campaign."""

    tenant_id: str
    campaign_id: uuid.UUID
    node: seg.Node
    variants: tuple[Variant, ...]
    templates: dict[uuid.UUID, Template]
    sender: str | None
    ab_test: AbTest | None
    phase: str
    winner: str | None
    cursor: uuid.UUID | None
    versions: dict[uuid.UUID, int] = field(default_factory=dict)  # the version of each template rendered
    sender_pool: str | None = None  # each contact's sender from this pool (sticky per recipient)


def parse_variants(raw: list[dict[str, Any]]) -> tuple[Variant, ...]:
    return tuple(Variant(v["name"], uuid.UUID(str(v["template_id"])), float(v["percent"])) for v in raw)


def parse_ab_test(raw: dict[str, Any] | None) -> AbTest | None:
    if not raw:
        return None
    return AbTest(float(raw["test_percent"]), raw.get("metric", "click_rate"), int(raw.get("wait_s", 3600)),
                  int(raw.get("min_sample", 100)))


class Launcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: Publisher,
        *,
        page_size: int = 1000,
        lease_s: float = 30.0,
        idle_s: float = 1.0,
        smart_encoding: bool = True,
        link_domain: str | None = None,
        link_ttl_s: int = int(DEFAULT_TTL.total_seconds()),
        clock: Callable[[], datetime] = utcnow,
        owner: str | None = None,
        page_timeout_s: float = 30.0,
        slice_s: float = 10.0,
        max_attempts: int = 5,
        retry_base_s: float = 30.0,
        retry_max_s: float = 1800.0,
        erasure_keys: ErasureKeys = NO_KEYS,
        in_flight: InFlightBound = UNBOUNDED,
        in_flight_expiry_s: float = 120.0,
        pace_wait_s: float = 1.0,
        pace_poll_s: float = 0.1,
        geo_rules: GeoRules | None = None,
    ) -> None:
        self.campaigns = CampaignRepository(pool)
        self.audience = AudienceRepository(pool, erasure_keys)  # `suppressed` in segments checks erased hashes
        self.publisher = publisher
        self.page_size = page_size
        self.lease_s = lease_s
        self.idle_s = idle_s
        self.smart_encoding = smart_encoding
        self.link_domain = link_domain  # None: URLs are sent as written
        self.link_ttl_s = link_ttl_s  # a tenant's own link_ttl_s overrides it
        self.links = LinksRepository(pool)
        self.registry = IngestRepository(pool)  # senders, pools and sticky assignments (pool campaigns)
        self.sender_rules = load_sender_rules()
        self.geo_rules = geo_rules or GeoRules()  # with the tenant's geo permissions, as the API checks them
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.page_timeout_s = page_timeout_s  # each audience page's statement timeout
        self.slice_s = slice_s  # a claim publishes pages this long at most, then the campaign goes back in line
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.bound = in_flight  # per-tenant campaign messages in the lanes; 0: no bound
        self.in_flight = InFlightRepository(pool)
        self.in_flight_expiry_s = in_flight_expiry_s  # a page counts in flight at most this long
        self.pace_wait_s = pace_wait_s  # at its bound, a claim waits this long for room, then yields
        self.pace_poll_s = pace_poll_s
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await run_periodically("campaign_launcher", self.launch_due, self.idle_s, self._stop, logger=log,
                               error_message="campaign launcher failed; retrying")

    async def launch_due(self) -> None:
        """Claim and fan out due campaigns one after the other until none is due (then the loop
        waits ``idle_s``, as after a failure)."""
        while not self._stop.is_set() and await self.run_once():
            pass

    async def run_once(self) -> bool:
        """Claim one due campaign and fan out a slice of it; False if none was due."""
        row = await self.campaigns.claim(self.owner, self.lease_s, self.clock())
        if row is None:
            return False
        tenant_id, campaign_id = row["tenant_id"], row["campaign_id"]
        try:
            plan = await self._plan(row)
            if plan is not None:
                await self.fan_out(plan)
        except Exception as exc:
            if error_kind(exc) == "unavailable":  # PostgreSQL or Kafka away: not this campaign's fault
                await self._release_quietly(tenant_id, campaign_id)
                raise
            await self._failed(row, exc)
            return True
        await self.campaigns.release(tenant_id, campaign_id, self.owner)
        return True

    async def _failed(self, row: asyncpg.Record, exc: Exception) -> None:
        reason = failure_reason(exc, self.page_timeout_s)
        retry_at = next_attempt_at(row["attempts"], self.clock(), max_attempts=self.max_attempts,
                                   base_s=self.retry_base_s, max_s=self.retry_max_s)
        state = await self.campaigns.failed_attempt(row["tenant_id"], row["campaign_id"], self.owner, reason, retry_at)
        FAILED_ATTEMPTS.labels("failed" if retry_at is None else "retry").inc()
        log.warning(
            "campaign %s (tenant %s): attempt %d failed: %s; %s", row["campaign_id"], row["tenant_id"],
            row["attempts"] + 1, reason, "giving up" if retry_at is None else f"retrying at {retry_at.isoformat()}",
            exc_info=not isinstance(exc, (seg.SegmentError, asyncpg.QueryCanceledError, asyncpg.DataError)),
        )
        if state is None:
            await self._release_quietly(row["tenant_id"], row["campaign_id"])

    async def _release_quietly(self, tenant_id: str, campaign_id: uuid.UUID) -> None:
        try:
            await self.campaigns.release(tenant_id, campaign_id, self.owner)
        except Exception:  # noqa: BLE001 - the lease runs out by itself
            log.warning("campaign %s: could not release the lease; it runs out in %.0f s", campaign_id, self.lease_s)

    async def _plan(self, row: asyncpg.Record) -> Plan | None:
        variants = parse_variants(row["variants"])
        stored = await self.campaigns.templates(row["tenant_id"], [v.template_id for v in variants],
                                                pinned_versions(row["variants"]))
        missing = [str(v.template_id) for v in variants if v.template_id not in stored]
        if missing:
            # A template deleted after creation: the campaign cannot go on. Cancel it visibly.
            log.error("campaign %s: templates %s are gone; cancelling", row["campaign_id"], missing)
            await self.campaigns.change_state(row["tenant_id"], row["campaign_id"], "running", "cancelled")
            return None
        templates = {
            tid: Template(r["purpose"], r["default_language"], r["variants"], r["sender"]) for tid, r in stored.items()
        }
        return Plan(
            tenant_id=row["tenant_id"],
            campaign_id=row["campaign_id"],
            node=seg.parse(row["segment_filter"]),
            variants=variants,
            templates=templates,
            sender=row["sender"],
            ab_test=parse_ab_test(row["ab_test"]),
            phase=row["phase"],
            winner=row["winner"],
            cursor=row["cursor"],
            versions={tid: r["version"] for tid, r in stored.items()},
            sender_pool=row["sender_pool"],
        )

    async def fan_out(self, plan: Plan) -> None:
        if not await self._room_for(plan.tenant_id):
            return  # the tenant's earlier pages are still in the lanes: another tenant's turn
        published = 0
        links_policy = await self._links_policy(plan.tenant_id)
        started = time.monotonic()
        page_started = time.monotonic()
        pages = self.audience.iter_audience(plan.tenant_id, plan.node, batch_size=self.page_size, after=plan.cursor,
                                            timeout_ms=int(self.page_timeout_s * 1000))
        # The next page is read while this one is rendered and published: one page of read-ahead.
        upcoming: asyncio.Task[list[AudienceMember]] | None = asyncio.ensure_future(anext(pages, []))
        while upcoming is not None:
            page = await upcoming
            if not page:
                break
            upcoming = asyncio.ensure_future(anext(pages, []))
            if self._stop.is_set() or not await self._room_for(plan.tenant_id):
                upcoming.cancel()  # at its bound: the page is read again when the campaign's turn comes
                return
            now = self.clock()
            checks = await self._checks(plan, page)
            if (blocked := sender_blocked(plan, checks)) is not None:
                upcoming.cancel()  # the sender it names cannot send to anyone: paused, not failed contact by contact
                await self._pause_for(plan, blocked, published)
                return
            out = self.page_events(plan, page, now, links_policy, checks)
            outgoing = out.accepted
            if plan.sender_pool is not None:
                await self._store_assignments(plan, outgoing, checks.sticky)
            replaced = await self.links.store_many(out.links)  # before the messages carrying them go out
            if replaced and links_policy is not None:  # a resumed page: the codes stored the first time
                outgoing = [self._swap(o, links_policy[0], replaced) for o in outgoing]
            await self.publisher.publish(outgoing + out.refused)
            if self.bound.limit(plan.tenant_id) > 0:
                await self.in_flight.record(plan.tenant_id, now, len(outgoing))
            state = await self.campaigns.advance(
                plan.tenant_id, plan.campaign_id, self.owner, page[-1].contact_id, len(outgoing), self.lease_s, self.clock()
            )
            FANNED_OUT.inc(len(outgoing))
            PAGE_SECONDS.observe(time.monotonic() - page_started)
            page_started = time.monotonic()
            published += len(outgoing)
            if state is None:
                upcoming.cancel()
                log.info("campaign %s stopped (paused, cancelled or taken over) after %d messages", plan.campaign_id, published)
                return
            if len(page) == self.page_size and time.monotonic() - started >= self.slice_s:
                upcoming.cancel()  # its turn is over: the next claim may go to another tenant
                return
        testing_until = None
        if plan.ab_test is not None and plan.phase == "test":
            testing_until = self.clock() + timedelta(seconds=plan.ab_test.wait_s)
        if await self.campaigns.finish_phase(plan.tenant_id, plan.campaign_id, self.owner, testing_until=testing_until):
            elapsed = time.monotonic() - started
            log.info(
                "campaign %s phase %s fanned out: %d messages in %.1f s (%.0f/s)", plan.campaign_id, plan.phase,
                published, elapsed, published / elapsed if elapsed else 0.0,
            )

    async def _links_policy(self, tenant_id: str) -> tuple[str, timedelta, str | None] | None:
        """(domain to shorten on, link lifetime, the tenant's own domain or None), or None when
        links are not tracked."""
        if not self.link_domain:
            return None
        own, ttl_s = await self.links.tenant_policy(tenant_id)
        return own or self.link_domain, timedelta(seconds=ttl_s or self.link_ttl_s), own

    @staticmethod
    def _swap(outgoing: Outgoing, domain: str, replaced: dict[str, str]) -> Outgoing:
        event = outgoing.event
        message = swap_codes(event.payload, domain, replaced)
        if message is event.payload:
            return outgoing
        return Outgoing(outgoing.topic, outgoing.key, event.model_copy(update={"payload": message}))

    async def _room_for(self, tenant_id: str) -> bool:
        """Whether the tenant may publish its next page: below its bound of campaign messages in
        flight, now or within ``pace_wait_s``. False: the claim yields its turn."""
        if self.bound.limit(tenant_id) <= 0:
            return True
        waited_from, paced = time.monotonic(), False
        while True:
            since = self.clock() - timedelta(seconds=self.in_flight_expiry_s)
            count = await self.in_flight.in_flight(tenant_id, since)
            IN_FLIGHT.set(count)
            waited = time.monotonic() - waited_from
            if self.bound.has_room(tenant_id, count):
                if paced:
                    PACED.labels("waited").inc()
                    PACED_SECONDS.inc(waited)
                return True
            if waited >= self.pace_wait_s or self._stop.is_set():
                PACED.labels("yielded").inc()
                PACED_SECONDS.inc(waited)
                log.debug("campaign launcher: tenant %s has %d campaign messages in flight (bound %d); yielding",
                          tenant_id, count, self.bound.limit(tenant_id))
                return False
            paced = True
            try:
                await asyncio.wait_for(self._stop.wait(), self.pace_poll_s)
            except TimeoutError:
                pass

    async def _pause_for(self, plan: Plan, blocked: Refusal, published: int) -> None:
        reason = f"{blocked.code}: {blocked.message}"
        if await self.campaigns.pause_for(plan.tenant_id, plan.campaign_id, self.owner, reason):
            PAUSED_FOR_SENDER.inc()
            log.warning("campaign paused: the sender it names cannot send", extra={
                "campaign_id": str(plan.campaign_id), "tenant": plan.tenant_id, "reason_code": blocked.code,
                "published": published})

    async def _checks(self, plan: Plan, page: list[AudienceMember]) -> PageChecks:
        """The page's :class:`PageChecks`: the tenant's geo permissions (one query), its registry
        when the campaign names a sender or pool (one more), and a pool campaign's sticky senders
        of the page's recipients (one more)."""
        geo = (await self.registry.active_tenants({plan.tenant_id}, with_disabled=True)).get(plan.tenant_id)
        if plan.sender_pool is None and plan.sender is None and not any(t.sender for t in plan.templates.values()):
            return PageChecks(geo)
        book = (await self.registry.sender_books({plan.tenant_id})).get(plan.tenant_id, SenderBook())
        if plan.sender_pool is None:
            return PageChecks(geo, book)
        keys = sorted({(plan.sender_pool, m.phone) for m in page})
        return PageChecks(geo, book, await self.registry.sender_assignments(plan.tenant_id, keys))

    async def _store_assignments(self, plan: Plan, outgoing: list[Outgoing], before: dict[tuple[str, str], str]) -> None:
        """The page's new and fallen-back assignments, in one or two statements."""
        first: dict[tuple[str, str], str] = {}
        fallbacks: dict[tuple[str, str], str] = {}
        for o in outgoing:
            m = o.event.payload  # type: ignore[attr-defined]
            how = m.sender_choice.get("sender_choice")
            if how == "assigned" and (m.sender_pool, m.to) not in before:
                first[(m.sender_pool, m.to)] = m.sender
            elif how == "fallback":
                fallbacks[(m.sender_pool, m.to)] = m.sender
        if first or fallbacks:
            await self.registry.assign_senders(plan.tenant_id, first, fallbacks)

    def page_events(
        self, plan: Plan, page: list[AudienceMember], now: datetime,
        links_policy: tuple[str, timedelta, str | None] | None = None,
        checks: PageChecks | None = None,
    ) -> PageOut:
        """Render and build the accepted events of one page (contacts of the other phase are skipped),
        each message passing the per-message checks every accepted message passes (``route``:
        geo permissions, sender registry, sender pool; a refused contact gets a failed status
        instead), with marketing URLs rewritten to tracked short links (counted in the segments)
        when ``links_policy`` (domain, lifetime, the tenant's own domain) is given."""
        checks = checks or PageChecks()
        out = PageOut()
        # Without a pool a message's route depends on its sender and country only: decided once
        # per pair and page (a pool's depends on the recipient's sticky sender).
        decided: dict[tuple[str | None, str], Route | Rejection] = {}
        for member in page:
            variant = assign(plan.campaign_id, member.contact_id, plan.variants, plan.ab_test, plan.phase, plan.winner)  # type: ignore[arg-type]
            if variant is None:
                continue
            template = plan.templates[variant.template_id]
            try:
                rendered = render(template, member.template_fields(), smart=self.smart_encoding)
            except TemplateError:
                RENDER_FAILED.inc()
                log.warning("campaign %s: contact %s: text too long once rendered; skipped", plan.campaign_id, member.contact_id)
                continue
            region = region_of_e164(member.phone)
            sender = plan.sender or rendered.sender
            routed = decided.get((sender, region)) if plan.sender_pool is None else None
            if routed is None:
                try:
                    routed = route(member.phone, region, sender=sender, sender_pool=plan.sender_pool, geo=checks.geo,
                                   geo_rules=self.geo_rules, senders=checks.senders, sender_rules=self.sender_rules,
                                   sticky=checks.sticky)
                except Rejection as rejection:
                    routed = rejection
                if plan.sender_pool is None:
                    decided[(sender, region)] = routed
            if isinstance(routed, Rejection):
                out.refused.append(self._refused(plan, member, variant.name, template, routed, now))
                continue
            message = build_message(
                campaign_id=plan.campaign_id, member=member, variant=variant, template=template,
                region=region, sender=routed.sender, now=now,
                smart_encoding=self.smart_encoding, rendered=rendered, template_version=plan.versions.get(variant.template_id),
            )
            if routed.pool is not None or routed.carrier_ids or routed.throttle is not None:
                message = message.model_copy(update={
                    "sender_pool": routed.pool, "sender_choice": routed.choice,
                    "sender_throttle": routed.throttle, "carrier_ids": routed.carrier_ids,
                })
            if links_policy is not None and message.type is MessageType.MARKETING:
                domain, ttl, own = links_policy
                message, found = track_message(message, domain, smart=self.smart_encoding)
                out.links += records(plan.tenant_id, message, found, ttl=ttl, domain=own)
            out.accepted.append(accepted_event(plan.tenant_id, message, trace_id=plan.campaign_id.hex))
        if out.refused:  # counted and logged once a page, not once a contact
            reasons = collections.Counter(o.event.payload.reason_code for o in out.refused)  # type: ignore[attr-defined]
            for code, count in reasons.items():
                REFUSED.labels(code).inc(count)
            log.info("campaign contacts refused", extra={"campaign_id": str(plan.campaign_id), "reasons": dict(reasons)})
        return out

    @staticmethod
    def _refused(plan: Plan, member: AudienceMember, variant: str, template: Template, rejection: Rejection,
                 now: datetime) -> Outgoing:
        return failed_status(
            plan.tenant_id, message_id_for(plan.campaign_id, member.contact_id), rejection, fact="campaign-contact-refused",
            occurred_at=now, trace_id=plan.campaign_id.hex, type=MessageType(template.purpose),
            detail={"source": "campaign", "campaign_id": str(plan.campaign_id)},
            campaign=(plan.campaign_id, variant, member.contact_id),
        )


def sender_blocked(plan: Plan, checks: PageChecks) -> Refusal | None:
    """Why the sender a campaign names (itself, or its templates) can send to no one now
    (suspended, unverified, removed), or None. A pool's senders fall back one to another per
    contact instead; a sender refused for some destinations only is a per-contact refusal."""
    if checks.senders is None or plan.sender_pool is not None:
        return None
    named = [plan.sender] if plan.sender else sorted({t.sender for t in plan.templates.values() if t.sender})
    for sender in named:
        if (refused := check_named(checks.senders, sender)) is not None:
            return refused
    return None


def failure_reason(exc: Exception, page_timeout_s: float) -> str:
    """What the tenant reads in GET /v1/campaigns/{id} (``failure.reason``): never internals."""
    if isinstance(exc, seg.SegmentError):
        return f"segment_invalid: {exc}"
    if isinstance(exc, asyncpg.QueryCanceledError):
        return f"audience_timeout: a page of the audience took longer than {page_timeout_s:g} s (statement timeout); narrow the segment"
    if isinstance(exc, asyncpg.DataError):
        return f"audience_query_failed: {exc}"
    return "internal_error: the campaign could not be fanned out; the operators have the details in the logs"
