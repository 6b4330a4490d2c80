"""``POST /v1/events`` (one) and ``POST /v1/events/batch`` (up to ``events_batch_max``)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import BaseModel

from services.ingest import deps
from services.ingest.domain import Rejection
from services.ingest.events.domain import parse_event
from services.ingest.events.service import EventAccepted, EventAcceptor
from services.ingest.settings import IngestSettings
from shared.api import ApiError, principal_dependency, require_json
from shared.auth import Principal
from shared.contracts import ContactEventRequest, utcnow
from shared.kafka import Outgoing

EVENTS = Counter("herald_contact_events_total", "Contact events received, by source and result", ["source", "result"])


class EventAnswer(BaseModel):
    event_id: uuid.UUID
    name: str
    contact_id: uuid.UUID | None
    status: str = "accepted"


def event_acceptor(request: Request) -> EventAcceptor:
    """The app's contact-event acceptor (ingest's wire puts it, and ``events_limiter``, on its state)."""
    return request.app.state.event_acceptor


def _trace_id(request: Request) -> str:
    value = request.headers.get("x-trace-id", "")
    return value[:64] if value else uuid.uuid4().hex


router = APIRouter(tags=["events"])
writer = Depends(principal_dependency("contacts:write"))


async def _limit(request: Request, principal: Principal) -> None:
    verdict = await request.app.state.events_limiter.check(principal.key_id, 0, principal.requests_per_minute, principal.messages_per_minute)
    if not verdict.allowed:
        raise ApiError(
            429, "rate_limited", f"this API key is over its {verdict.limit} per minute limit; retry in {verdict.retry_after_s}s",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )


async def _publish(request: Request, outgoing: list[Outgoing]) -> None:
    try:
        await deps.publisher(request).publish(outgoing)
    except Exception as exc:
        raise ApiError(503, "broker_unavailable", "could not publish, retry with the same event_key") from exc


@router.post("/v1/events", status_code=202, response_model=EventAnswer, responses={401: {}, 403: {}, 422: {}, 429: {}, 503: {}})
async def post_event(body: ContactEventRequest, request: Request, principal: Principal = writer,
                     acceptor: EventAcceptor = Depends(event_acceptor)) -> EventAnswer:
    """Report what a contact did (``form.submitted``, ``order.completed``…): journeys start,
    wait for and exit on events; one with a ``value`` is a conversion. Give ``event_key``
    so that sending it again counts once."""
    await _limit(request, principal)
    results, outgoing = await acceptor.prepare(principal.tenant_id, [body], source="api", now=utcnow(), trace_id=_trace_id(request))
    result = results[0]
    if isinstance(result, Rejection):
        EVENTS.labels("api", result.code).inc()
        raise ApiError(422, result.code, result.message, result.details)
    await _publish(request, outgoing)
    EVENTS.labels("api", "accepted").inc()
    return EventAnswer(event_id=result.event.event_id, name=result.event.name, contact_id=result.event.contact_id)

def batch_schema(batch_max: int | None = None) -> dict[str, Any]:
    """The batch body's documented schema (the route reads the body itself; keys in the order the
    document always had them). The limit is a setting: ingest's wire documents its own."""
    events: dict[str, Any] = {"items": {"$ref": "#/components/schemas/ContactEventRequest"}, "type": "array"}
    if batch_max is not None:
        events["maxItems"] = batch_max
    events["minItems"] = 1
    return {"properties": {"events": events}, "additionalProperties": False, "type": "object", "required": ["events"]}


@router.post(
    "/v1/events/batch",
    status_code=202,
    responses={401: {}, 403: {}, 413: {}, 415: {}, 422: {}, 429: {}, 503: {}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": batch_schema()}}}},
)


async def post_events(request: Request, principal: Principal = writer,
                      acceptor: EventAcceptor = Depends(event_acceptor),
                      settings: IngestSettings = Depends(deps.ingest_settings)) -> JSONResponse:
    """Up to ``HERALD_EVENTS_BATCH_MAX`` events; good ones are accepted, bad ones listed with their reason."""
    require_json(request)
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "malformed_json", "body is not valid JSON") from None
    if not isinstance(body, dict) or set(body) != {"events"} or not isinstance(body["events"], list):
        raise ApiError(
            422, "validation_failed", 'body must be {"events": [...]}',
            [{"loc": "body.events", "code": "missing", "msg": "a list of events is required"}],
        )
    items = body["events"]
    if not items:
        raise ApiError(422, "empty_batch", "events must hold at least one event")
    batch_max = settings.events_batch_max
    if len(items) > batch_max:
        raise ApiError(413, "batch_too_large", f"{len(items)} events, at most {batch_max} per batch")
    await _limit(request, principal)
    parsed: list[ContactEventRequest | Rejection] = []
    for item in items:
        try:
            parsed.append(parse_event(item))
        except Rejection as rejection:
            parsed.append(rejection)
    results, outgoing = await acceptor.prepare(
        principal.tenant_id, parsed, source="api", now=utcnow(), trace_id=_trace_id(request)
    )
    answers: list[dict[str, Any]] = []
    for index, result in enumerate(results):
        if isinstance(result, EventAccepted):
            EVENTS.labels("api", "accepted").inc()
            e = result.event
            answers.append({"index": index, "event_id": str(e.event_id), "name": e.name,
                            "contact_id": str(e.contact_id) if e.contact_id else None})
        else:
            EVENTS.labels("api", result.code).inc()
            answers.append({"index": index, "error": result.as_dict()})
    accepted = len(outgoing)
    if accepted == 0:
        raise ApiError(422, "all_rejected", "no event in the batch is valid", [a["error"] | {"index": a["index"]} for a in answers[:100]])
    await _publish(request, outgoing)
    return JSONResponse({"accepted": accepted, "rejected": len(results) - accepted, "results": answers}, status_code=202)
