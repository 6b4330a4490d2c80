"""ingest's composition root: HTTP API plus the trigger-topic consumer."""

from __future__ import annotations

from services.ingest.api import create_app
from services.ingest.campaigns.launcher import Launcher
from services.ingest.replies.handler import RepliesHandler
from services.ingest.replies.repository import RepliesRepository
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from services.ingest.triggers import TriggerHandler
from shared.api import Check
from shared.service import Context, Lane, Wiring, run_service
from shared.topics import INBOUND, TRIGGERS


async def wire(ctx: Context, readiness: Check) -> Wiring:
    settings: IngestSettings = ctx.settings
    repository = IngestRepository(ctx.pool)
    acceptor = Acceptor(repository, settings)
    app = create_app(settings, ctx.pool, acceptor, ctx.publisher, repository, readiness)
    if settings.campaign_launcher:
        launcher = Launcher(ctx.pool, ctx.publisher, page_size=settings.campaign_page_size,
                            lease_s=settings.campaign_lease_s, smart_encoding=settings.smart_encoding)
        ctx.workers["campaign-launcher"] = launcher.run()
        ctx.stoppers.append(launcher.stop)
    # Inbound replies (STOP/START/HELP, forwarding): their own consumer group, see docs/replies.md.
    replies = Lane("replies", f"{settings.topic_prefix}ingest.replies", [INBOUND],
                   RepliesHandler(acceptor, RepliesRepository(ctx.pool)))
    return Wiring(handler=TriggerHandler(acceptor, repository), app=app, lanes=[replies])


async def main(settings: IngestSettings | None = None) -> int:
    settings = settings or IngestSettings()
    return await run_service("ingest", settings, [TRIGGERS], wire, ready_needs_assignment=False)
