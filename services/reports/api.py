"""reports' HTTP API: a message's status and timeline, scoped to the caller's tenant."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from services.reports import campaign_report
from services.reports.repository import fetch_message, search_messages
from services.reports.search import (
    MAX_PAGE,
    MessageQuery,
    SearchError,
    build_sql,
    check_range,
    csv_lines,
    decode_cursor,
    ndjson_lines,
    next_cursor,
    parse_metadata,
    parse_statuses,
    row_out,
)
from shared.api import ApiError, api_app, install_error_handlers, principal_dependency
from shared.auth import Principal
from shared.pagination import Cursor


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
    template_id: uuid.UUID | None = Field(None, description="The template it was rendered from (sent by template)")
    template_version: int | None = Field(None, description="That template's version")
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
    targeted: int = Field(description="The campaign's messages: accepted, or refused at the launch by the per-message checks (then failed)")
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


E164_PATTERN = r"^\+[0-9]{4,15}$"
Statuses = Annotated[list[str], Query(description="Only these statuses (repeat the parameter)")]
Metadata = Annotated[list[str], Query(description="key=value on metadata; all must match (at most 5)")]


class MessageList(BaseModel):
    messages: list[dict[str, Any]] = Field(description="The page's messages (as GET /v1/messages/{id}, without the timeline)")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page")


router = APIRouter()  # mounted by create_app; what the routes need is on the app's state
reader = Depends(principal_dependency("messages:read"))


def state_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


def state_search_timeout_ms(request: Request) -> int:
    return request.app.state.search_timeout_ms


def state_ab_alpha(request: Request) -> float:
    return request.app.state.ab_alpha


def query_of(principal: Principal, status: list[str], since: datetime | None, until: datetime | None,
             to: str | None, campaign_id: uuid.UUID | None, metadata: list[str], cursor: str | None) -> MessageQuery:
    try:
        check_range(since, until)
        return MessageQuery(
            tenant_id=principal.tenant_id, statuses=parse_statuses(status), since=since, until=until,
            to=to, campaign_id=campaign_id, metadata=parse_metadata(metadata),
            after=decode_cursor(cursor) if cursor else None,
        )
    except SearchError as exc:
        raise ApiError(422, exc.code, str(exc), [{"loc": exc.loc, "code": exc.code, "msg": str(exc)}]) from None


async def page(pool: asyncpg.Pool, search_timeout_ms: int, query: MessageQuery, limit: int) -> list[dict[str, Any]]:
    sql, args = build_sql(query, limit)
    try:
        return await search_messages(pool, sql, args, search_timeout_ms)
    except asyncpg.QueryCanceledError:
        raise ApiError(422, "query_too_broad", "the search took too long: narrow it (since/until, status, to)",
                       [{"loc": "query", "code": "query_too_broad", "msg": "add filters or a shorter date range"}]) from None


@router.get("/v1/messages", response_model=MessageList, responses={401: {}, 403: {}, 422: {}})
async def list_messages(
    principal: Principal = reader,
    status: Statuses = [],  # noqa: B006 - FastAPI copies query defaults
    since: Annotated[datetime | None, Query(description="Accepted at or after (ISO 8601 with zone)")] = None,
    until: Annotated[datetime | None, Query(description="Accepted before (ISO 8601 with zone)")] = None,
    to: Annotated[str | None, Query(pattern=E164_PATTERN, description="Recipient, E.164")] = None,
    campaign_id: uuid.UUID | None = None,
    metadata: Metadata = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
    pool: asyncpg.Pool = Depends(state_pool),
    search_timeout_ms: int = Depends(state_search_timeout_ms),
) -> dict[str, Any]:
    """The tenant's messages, newest first, with filters; pages follow ``next_cursor``."""
    query = query_of(principal, status, since, until, to, campaign_id, metadata, cursor)
    rows = await page(pool, search_timeout_ms, query, limit)
    return {"messages": [row_out(r) for r in rows], "next_cursor": next_cursor(rows, limit)}


@router.get("/v1/messages/export", responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}},
                                           401: {}, 403: {}, 422: {}})


async def export_messages(
    principal: Principal = reader,
    format: Annotated[Literal["ndjson", "csv"], Query(description="ndjson (one JSON object a line) or csv")] = "ndjson",
    status: Statuses = [],  # noqa: B006
    since: Annotated[datetime | None, Query()] = None,
    until: Annotated[datetime | None, Query()] = None,
    to: Annotated[str | None, Query(pattern=E164_PATTERN)] = None,
    campaign_id: uuid.UUID | None = None,
    metadata: Metadata = [],  # noqa: B006
    pool: asyncpg.Pool = Depends(state_pool),
    search_timeout_ms: int = Depends(state_search_timeout_ms),
) -> StreamingResponse:
    """Every message the filters match, streamed newest first (the same filters as the list)."""
    query = query_of(principal, status, since, until, to, campaign_id, metadata, None)
    first = await page(pool, search_timeout_ms, query, MAX_PAGE)  # errors (a too-broad search) answer before the stream starts

    async def body() -> AsyncIterator[str]:
        rows, header = first, True
        while rows:
            yield csv_lines(rows, header) if format == "csv" else ndjson_lines(rows)
            header = False
            if len(rows) < MAX_PAGE:
                return
            last = rows[-1]
            rows = await page(pool, search_timeout_ms,
                          replace(query, after=Cursor(last["accepted_at"], last["message_id"])), MAX_PAGE)
        if header and format == "csv":
            yield csv_lines([], True)

    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(body(), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="messages.{format}"'})


@router.get("/v1/messages/{message_id}", response_model=MessageView, responses={401: {}, 403: {}, 404: {}, 422: {}})
async def get_message(message_id: uuid.UUID, principal: Principal = reader,
                      pool: asyncpg.Pool = Depends(state_pool)) -> dict[str, Any]:
    """A message's current status and its timeline. Another tenant's message is a 404."""
    found = await fetch_message(pool, principal.tenant_id, message_id)
    if found is None:
        raise ApiError(404, "message_not_found", "no message with this id for your tenant (yet)")
    return found


@router.get(
    "/v1/campaigns/{campaign_id}/report",
    response_model=CampaignReport,
    responses={401: {}, 403: {}, 404: {}, 422: {}},
)


async def get_campaign_report(campaign_id: uuid.UUID, principal: Principal = reader,
                              pool: asyncpg.Pool = Depends(state_pool),
                              ab_alpha: float = Depends(state_ab_alpha)) -> dict[str, Any]:
    """A campaign's results per variant (sent, delivered, clicks, conversions, revenue, segments)
    and its A/B test. Another tenant's campaign is a 404. See docs/results.md."""
    async with pool.acquire() as conn:
        report = await campaign_report.load(conn, campaign_id, principal.tenant_id, ab_alpha)
    if report is None:
        raise ApiError(404, "campaign_not_found", "no campaign with this id for your tenant")
    return report


def create_app(pool: asyncpg.Pool, ab_alpha: float = 0.05, *, api_docs: bool = False, search_timeout_ms: int = 5000) -> FastAPI:
    """The public API. Health and metrics are on the ops port (shared/service.py), the docs only
    with ``api_docs`` (``HERALD_API_DOCS``)."""
    app = api_app(title="Herald reports", version="1.0", description="Message status and timelines, finding and exporting messages, campaign reports with "
                  "their A/B tests. Health and metrics are on the ops port. Swagger UI and ReDoc are served by "
                  "reports itself (/docs/assets): the pages work offline.",
                  docs=api_docs)
    app.state.pool = pool
    app.state.ab_alpha = ab_alpha
    app.state.search_timeout_ms = search_timeout_ms
    install_error_handlers(app)
    app.include_router(router)
    return app
