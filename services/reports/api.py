"""reports' HTTP API: a message's status and timeline, scoped to the caller's tenant."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from services.reports import campaign_report
from services.reports.repository import fetch_message
from shared.api import ApiError, docs_routes, install_error_handlers, principal_dependency
from shared.auth import Principal


class TimelineEntry(BaseModel):
    status: str
    occurred_at: datetime
    detail: dict[str, Any]


class MessageView(BaseModel):
    message_id: uuid.UUID
    tenant_id: str
    status: str
    reason_code: str | None
    reason: str | None
    to_e164: str | None
    country: str | None
    type: str | None
    sender: str | None
    encoding: str | None
    segments: int | None
    source: str | None
    idempotency_key: str | None
    metadata: dict[str, str] | None
    status_callback_url: str | None
    gateway: str | None
    gateway_message_id: str | None
    accepted_at: datetime | None
    submitted_at: datetime | None
    final_at: datetime | None
    contact_id: uuid.UUID | None = None
    campaign_id: uuid.UUID | None = None
    variant: str | None = None
    journey_id: uuid.UUID | None = None
    part_status: dict[str, dict[str, str]] | None = Field(
        None, description="A concatenated message: each part's gateway id → status and time of its receipt"
    )
    timeline: list[TimelineEntry]


class HeldRule(BaseModel):
    rule: str = Field(description="quiet_hours, scheduled (send_at), campaign_paused, frequency_capped…")
    count: int
    next_release: str | None = Field(description="When the first of them is due to go (ISO 8601, UTC)")
    until: str | None = Field(description="When the last of them is due to go (ISO 8601, UTC)")


class VariantResults(BaseModel):
    variant: str | None = Field(None, description="The variant's name (absent on the totals; '-' for no variant)")
    targeted: int = Field(description="Messages accepted for the campaign")
    skipped: dict[str, int] = Field(description="Messages not sent, by reason code (suppressed, consent, caps…)")
    skipped_total: int
    pending: int = Field(description="Messages without a final status yet (unknown ones excluded)")
    held: int = Field(0, description="Of the pending, messages the scheduler holds (status scheduled)")
    held_by: list[HeldRule] = Field(default_factory=list, description="The held messages by the rule that holds them")
    sent: int = Field(description="Messages submitted to a gateway")
    delivered: int
    undelivered: int
    failed: int
    expired: int
    unknown: int = Field(0, description="Messages whose submission outcome Herald could not determine (not resent)")
    delivery_rate: float | None = Field(description="delivered / sent")
    clicks_total: int = Field(description="Clicks by people (bots and previews excluded)")
    clicks_unique: int = Field(description="Messages clicked at least once by a person")
    bot_clicks: int
    click_rate: float | None = Field(description="clicks_unique / delivered")
    conversions: int = Field(description="Conversions attributed to the campaign's messages")
    conversion_rate: float | None = Field(description="conversions / delivered")
    revenue: dict[str, str] = Field(description="Attributed conversion value by currency (decimal strings)")
    segments: int = Field(description="Segments of the messages sent")


class CampaignReport(BaseModel):
    campaign_id: uuid.UUID
    tenant_id: str
    name: str
    state: str
    phase: str | None
    published: int | None
    winner: str | None
    totals: VariantResults
    variants: list[VariantResults]
    ab_test: dict[str, Any] | None = Field(
        description="metric, alpha, min_sample, variants (successes, trials, rate), comparisons (z, p_value),"
        " configured (the campaign has an A/B test), winner (only a configured test's significant winner),"
        " leader (the best so far; null without trials), significant, reason, decided (the stored decision)"
    )


def create_app(pool: asyncpg.Pool, ab_alpha: float = 0.05, *, api_docs: bool = False) -> FastAPI:
    """The public API. Health and metrics are on the ops port (shared/service.py), the docs only
    with ``api_docs`` (``HERALD_API_DOCS``)."""
    app = FastAPI(title="Herald reports", version="1.0", description="Message status, timelines and metrics.",
                  **docs_routes(api_docs))
    app.state.pool = pool
    install_error_handlers(app)
    reader = Depends(principal_dependency("messages:read"))

    @app.get("/v1/messages/{message_id}", response_model=MessageView, responses={401: {}, 403: {}, 404: {}, 422: {}})
    async def get_message(message_id: uuid.UUID, principal: Principal = reader) -> dict[str, Any]:
        """A message's current status and its timeline. Another tenant's message is a 404."""
        found = await fetch_message(pool, principal.tenant_id, message_id)
        if found is None:
            raise ApiError(404, "message_not_found", "no message with this id for your tenant (yet)")
        return found

    @app.get(
        "/v1/campaigns/{campaign_id}/report",
        response_model=CampaignReport,
        responses={401: {}, 403: {}, 404: {}, 422: {}},
    )
    async def get_campaign_report(campaign_id: uuid.UUID, principal: Principal = reader) -> dict[str, Any]:
        """A campaign's results per variant (sent, delivered, clicks, conversions, revenue, segments)
        and its A/B test. Another tenant's campaign is a 404. See docs/results.md."""
        async with pool.acquire() as conn:
            report = await campaign_report.load(conn, campaign_id, principal.tenant_id, ab_alpha)
        if report is None:
            raise ApiError(404, "campaign_not_found", "no campaign with this id for your tenant")
        return report

    return app
