"""scheduler's composition root."""

from __future__ import annotations

from services.scheduler.handlers import AcceptedHandler, FactsRepository
from services.scheduler.settings import SchedulerSettings
from shared.api import Check
from shared.service import Context, Wiring, run_service
from shared.topics import ACCEPTED


async def wire(ctx: Context, readiness: Check) -> Wiring:
    return Wiring(handler=AcceptedHandler(FactsRepository(ctx.pool)))


async def main(settings: SchedulerSettings | None = None) -> int:
    settings = settings or SchedulerSettings()
    return await run_service("scheduler", settings, [ACCEPTED], wire)
