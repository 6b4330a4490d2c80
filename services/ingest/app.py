"""ingest's composition root: HTTP API plus the trigger-topic consumer."""

from __future__ import annotations

from services.ingest.api import create_app
from services.ingest.audience.subject_access import PartsHandler, ingest_gatherer
from services.ingest.campaigns.launcher import Launcher
from services.ingest.campaigns.pacing import InFlightBound
from services.ingest.campaigns.progress import CampaignProgress, LaneProgressHandler
from services.ingest.campaigns.winners import CampaignWinnersHandler
from services.ingest.events.api import batch_schema as events_batch_schema
from services.ingest.events.api import router as events_router
from services.ingest.events.consumer import ContactEventsHandler
from services.ingest.events.service import ContactsLookup, EventAcceptor
from services.ingest.journey_sends import JourneySendsHandler
from services.ingest.journeys.api import router as journeys_router
from services.ingest.link_activation import LinkActivationHandler
from services.ingest.links_repo import LinksRepository
from services.ingest.ratelimit import RateLimiter
from services.ingest.redirect import ClickBuffer, LinkCache, TakedownWatcher
from services.ingest.redirect import router as links_router
from services.ingest.replies.handler import RepliesHandler
from services.ingest.replies.repository import RepliesRepository
from services.ingest.repository import IngestRepository
from services.ingest.retention import tasks as retention_tasks
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from services.ingest.statuses import StatusesHandler
from services.ingest.triggers import TriggerHandler
from shared.api import Check, document_body_schema
from shared.retention_store import add_retention_job
from shared.service import Context, Lane, Wiring, run_service
from shared.subject_access_store import GatherHandler
from shared.topics import (
    CAMPAIGN_WINNERS,
    CONTACT_EVENTS_IN,
    INBOUND,
    JOURNEY_SENDS,
    STATUS,
    SUBJECT_ACCESS,
    SUBJECT_ACCESS_PARTS,
    TRIGGERS,
)

# Routers mounted after create_app's, once their state is set up below (the short-link redirect,
# contact events, journeys); docs/scopes.md lists their routes too (herald_tools/scopedoc.py).
LATE_ROUTERS = (links_router, events_router, journeys_router)


async def wire(ctx: Context, readiness: Check) -> Wiring:
    settings: IngestSettings = ctx.settings
    repository = IngestRepository(ctx.pool)
    links = LinksRepository(ctx.pool)
    acceptor = Acceptor(repository, settings, links)
    app = create_app(settings, ctx.pool, acceptor, ctx.publisher, repository)
    if getattr(app.state, "keys", None) is not None:
        ctx.stack.push_async_callback(app.state.keys.close)
    if settings.campaign_launcher:
        launcher = Launcher(ctx.pool, ctx.publisher, page_size=settings.campaign_page_size,
                            lease_s=settings.campaign_lease_s, smart_encoding=settings.smart_encoding,
                            link_domain=settings.link_domain if settings.link_tracking else None,
                            link_ttl_s=settings.link_ttl_s,
                            page_timeout_s=settings.campaign_page_timeout_s, slice_s=settings.campaign_slice_s,
                            max_attempts=settings.campaign_max_attempts, retry_base_s=settings.campaign_retry_base_s,
                            retry_max_s=settings.campaign_retry_max_s, erasure_keys=settings.erasure_keyring(),
                            in_flight=InFlightBound(settings.campaign_tenant_in_flight,
                                                    settings.campaign_tenant_in_flight_tenants),
                            in_flight_expiry_s=settings.campaign_in_flight_expiry_s,
                            pace_wait_s=settings.campaign_pace_wait_s,
                            geo_rules=settings.geo_rules())
        ctx.workers["campaign-launcher"] = launcher.run()
        ctx.stoppers.append(launcher.stop)
    # Messages received and idempotency keys past their age (services/ingest/retention.py).
    add_retention_job(ctx, retention_tasks(settings))
    # Short-link redirect (docs/results.md): clicks are published in batches by a worker.
    clicks = ClickBuffer(ctx.publisher, settings.click_flush_interval_ms, settings.click_buffer_max)
    ctx.workers["click-publisher"] = clicks.run()
    ctx.stoppers.append(clicks.stop)
    link_cache = LinkCache(links, settings.link_cache_size, settings.link_cache_ttl_s)
    app.state.link_cache, app.state.clicks = link_cache, clicks
    app.include_router(LATE_ROUTERS[0])  # links_router
    takedowns = TakedownWatcher(links, link_cache, settings.link_takedown_poll_s)
    ctx.workers["link-takedowns"] = takedowns.run()
    ctx.stoppers.append(takedowns.stop)
    # The links lane reads the statuses: short links answer once their message is submitted, and
    # the campaign lanes' mark moves for the launcher's pacing (docs/operations.md, fair share).
    links_lane = Lane("links", f"{settings.topic_prefix}ingest.links", [STATUS], StatusesHandler(
        [LinkActivationHandler(links), LaneProgressHandler(CampaignProgress(ctx.pool))]))
    # Inbound replies (STOP/START/HELP, forwarding): their own consumer group, see docs/replies.md.
    replies = Lane("replies", f"{settings.topic_prefix}ingest.replies", [INBOUND],
                   RepliesHandler(acceptor, RepliesRepository(ctx.pool)))
    # Contact events (HTTP and their topic, one validation path) and journey definitions: docs/journeys.md.
    events = EventAcceptor(ContactsLookup(ctx.pool))
    limiter = RateLimiter(ctx.pool, settings.rate_limit_requests_per_minute, settings.rate_limit_messages_per_minute)
    app.state.event_acceptor, app.state.events_limiter = events, limiter
    app.include_router(LATE_ROUTERS[1])  # events_router
    document_body_schema(app, "/v1/events/batch", events_batch_schema(settings.events_batch_max))
    app.include_router(LATE_ROUTERS[2])  # journeys_router
    contact_events = Lane("contact-events", f"{settings.topic_prefix}ingest.contact-events", [CONTACT_EVENTS_IN],
                          ContactEventsHandler(events, repository, settings.kafka_input_signatures))
    # Subject-access exports (docs/data-map.md): ingest's own part, and every service's parts stored.
    subject_access = Lane("subject-access", f"{settings.topic_prefix}ingest.subject-access", [SUBJECT_ACCESS],
                          GatherHandler(ctx.pool, "ingest", ingest_gatherer(settings.erasure_keyring()),
                                        settings.subject_access_part_bytes))
    parts = Lane("subject-access-parts", f"{settings.topic_prefix}ingest.subject-access-parts", [SUBJECT_ACCESS_PARTS],
                 PartsHandler(ctx.pool))
    # A/B winners reports picked (docs/campaigns.md): ingest owns campaigns and starts the winner phase.
    winners = Lane("campaign-winners", f"{settings.topic_prefix}ingest.campaign-winners", [CAMPAIGN_WINNERS],
                   CampaignWinnersHandler(ctx.pool))
    # Journeys' send steps (docs/journeys.md): accepted as the API's and the triggers' messages are.
    journey_sends = Lane("journey-sends", f"{settings.topic_prefix}ingest.journey-sends", [JOURNEY_SENDS],
                         JourneySendsHandler(acceptor, repository))
    return Wiring(handler=TriggerHandler(acceptor, repository, settings.kafka_input_signatures), app=app,
                  lanes=[replies, contact_events, subject_access, parts, links_lane, winners, journey_sends])


async def main(settings: IngestSettings | None = None) -> int:
    settings = settings or IngestSettings()
    if problems := settings.unsafe_secrets():
        # Anyone could forge receipts with such a secret: refuse to start rather than accept them.
        raise SystemExit("ingest: refusing to start: " + "; ".join(problems))
    return await run_service("ingest", settings, [TRIGGERS], wire, ready_needs_assignment=False)
