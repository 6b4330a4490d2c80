"""reports' HTTP API: a message's status and timeline, scoped to the caller's tenant."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
from fastapi import Depends, FastAPI
from pydantic import BaseModel

from services.reports.repository import fetch_message
from shared.api import ApiError, Check, add_ops_routes, install_error_handlers, principal_dependency
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
    timeline: list[TimelineEntry]


def create_app(pool: asyncpg.Pool, readiness: Check) -> FastAPI:
    app = FastAPI(title="Herald reports", version="1.0", description="Message status, timelines and metrics.")
    app.state.pool = pool
    install_error_handlers(app)
    add_ops_routes(app, readiness)
    reader = Depends(principal_dependency("messages:read"))

    @app.get("/v1/messages/{message_id}", response_model=MessageView, responses={401: {}, 403: {}, 404: {}, 422: {}})
    async def get_message(message_id: uuid.UUID, principal: Principal = reader) -> dict[str, Any]:
        """A message's current status and its timeline. Another tenant's message is a 404."""
        found = await fetch_message(pool, principal.tenant_id, message_id)
        if found is None:
            raise ApiError(404, "message_not_found", "no message with this id for your tenant (yet)")
        return found

    return app
