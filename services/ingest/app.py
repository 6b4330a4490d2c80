"""ingest's composition root: HTTP API plus the trigger-topic consumer."""

from __future__ import annotations

from services.ingest.api import create_app
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from services.ingest.triggers import TriggerHandler
from shared.api import Check
from shared.service import Context, Wiring, run_service
from shared.topics import TRIGGERS


async def wire(ctx: Context, readiness: Check) -> Wiring:
    settings: IngestSettings = ctx.settings
    repository = IngestRepository(ctx.pool)
    acceptor = Acceptor(repository, settings)
    app = create_app(settings, ctx.pool, acceptor, ctx.publisher, repository, readiness)
    return Wiring(handler=TriggerHandler(acceptor, repository), app=app)


async def main(settings: IngestSettings | None = None) -> int:
    settings = settings or IngestSettings()
    return await run_service("ingest", settings, [TRIGGERS], wire, ready_needs_assignment=False)
