"""reports' composition root."""

from __future__ import annotations

from datetime import timedelta

from services.reports.api import create_app
from services.reports.erasure import reports_eraser
from services.reports.handlers import PendingSweeper, StatusHandler
from services.reports.results import ResultsHandler
from services.reports.retention import tasks as retention_tasks
from services.reports.settings import ReportsSettings
from services.reports.subject_access import reports_gatherer
from services.reports.webhooks.handler import ReplyWebhookHandler
from services.reports.webhooks.worker import WebhookWorker
from services.reports.winner import WinnerWorker
from shared.api import Check
from shared.erasure_store import ErasureHandler
from shared.retention_store import add_retention_job
from shared.service import Context, Lane, Wiring, run_service
from shared.subject_access_store import GatherHandler
from shared.topics import (
    ACCEPTED,
    ACCEPTED_BULK,
    CLICKS,
    CONTACT_EVENTS,
    ERASURES,
    RECEIPTS,
    REPLIES,
    STATUS,
    SUBJECT_ACCESS,
)


async def wire(ctx: Context, readiness: Check) -> Wiring:
    settings: ReportsSettings = ctx.settings
    window = timedelta(hours=settings.receipt_match_window_h)
    skew = timedelta(seconds=settings.receipt_match_skew_s)
    settled_wait = timedelta(seconds=settings.receipt_settled_wait_s)
    sweeper = PendingSweeper(ctx.pool, settings.pending_sweep_interval_s, window, skew, settled_wait)
    ctx.workers["pending-sweeper"] = sweeper.run()
    ctx.stoppers.append(sweeper.stop)
    # History, clicks and webhook rows past their age; timeline partitions (services/reports/retention.py).
    add_retention_job(ctx, retention_tasks(settings))
    if settings.webhooks_enabled:
        webhook_worker = WebhookWorker(ctx.pool, settings)
        ctx.workers["webhooks"] = webhook_worker.run()
        ctx.stoppers.append(webhook_worker.stop)
    if settings.ab_winner_enabled:
        winner = WinnerWorker(ctx.pool, ctx.publisher, settings.ab_winner_interval_s, settings.ab_alpha,
                              republish_s=settings.ab_winner_republish_s)
        ctx.workers["ab-winner"] = winner.run()
        ctx.stoppers.append(winner.stop)
    # Clicks and conversions: a consumer group of their own (docs/results.md).
    results = Lane(
        "results", f"{settings.topic_prefix}reports.results", [CLICKS, CONTACT_EVENTS],
        ResultsHandler(ctx.pool, timedelta(hours=settings.attribution_window_h), settings.click_bot_min_delay_s),
    )
    # Ordinary replies to post to the tenants' reply webhooks: their own group (docs/replies.md).
    replies = Lane("replies", f"{settings.topic_prefix}reports.replies", [REPLIES], ReplyWebhookHandler(ctx.pool))
    # Unmatched receipts are parked at most receipt_parked_max_per_gateway per gateway (docs/results.md).
    status = StatusHandler(ctx.pool, window, skew, settled_wait, settings.receipt_parked_max_per_gateway)
    # Erasures (docs/data-map.md): an erased number's messages, clicks, conversions and webhook rows.
    erasures = Lane("erasures", f"{settings.topic_prefix}reports.erasures", [ERASURES],
                    ErasureHandler(ctx.pool, "reports", reports_eraser))
    # Subject-access exports (docs/data-map.md): a number's messages, timeline, clicks, conversions, webhook rows.
    subject_access = Lane("subject-access", f"{settings.topic_prefix}reports.subject-access", [SUBJECT_ACCESS],
                          GatherHandler(ctx.pool, "reports", reports_gatherer, settings.subject_access_part_bytes))
    return Wiring(handler=status, app=create_app(ctx.pool, settings.ab_alpha, api_docs=settings.api_docs,
                                                 search_timeout_ms=settings.search_timeout_ms),
                  lanes=[results, replies, erasures, subject_access])


async def main(settings: ReportsSettings | None = None) -> int:
    settings = settings or ReportsSettings()
    return await run_service("reports", settings, [ACCEPTED, ACCEPTED_BULK, STATUS, RECEIPTS], wire)
