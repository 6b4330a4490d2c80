"""reports' composition root."""

from __future__ import annotations

from services.reports.api import create_app
from services.reports.handlers import PendingSweeper, StatusHandler
from services.reports.settings import ReportsSettings
from services.reports.webhooks import WebhookWorker
from shared.api import Check
from shared.service import Context, Wiring, run_service
from shared.topics import ACCEPTED, ACCEPTED_BULK, RECEIPTS, STATUS


async def wire(ctx: Context, readiness: Check) -> Wiring:
    settings: ReportsSettings = ctx.settings
    sweeper = PendingSweeper(ctx.pool, settings.pending_sweep_interval_s)
    ctx.workers["pending-sweeper"] = sweeper.run()
    ctx.stoppers.append(sweeper.stop)
    if settings.webhooks_enabled:
        webhook_worker = WebhookWorker(ctx.pool, settings)
        ctx.workers["webhooks"] = webhook_worker.run()
        ctx.stoppers.append(webhook_worker.stop)
    return Wiring(handler=StatusHandler(ctx.pool), app=create_app(ctx.pool, readiness))


async def main(settings: ReportsSettings | None = None) -> int:
    settings = settings or ReportsSettings()
    return await run_service("reports", settings, [ACCEPTED, ACCEPTED_BULK, STATUS, RECEIPTS], wire)
