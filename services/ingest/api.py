"""ingest's HTTP API: messages, batches, suppressions and gateway receipts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
import uuid
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field

from services.ingest import deps, metrics
from services.ingest.audience.contacts_api import router as audience_router
from services.ingest.campaigns.api import router as campaigns_router
from services.ingest.domain import (
    MAX_SCHEDULE_AHEAD,
    Rejection,
    batch_item_fingerprint,
    batch_message_ids,
    parse_request,
)
from services.ingest.ratelimit import RateLimiter
from services.ingest.replies.api import router as inbound_router
from services.ingest.repository import IngestRepository
from services.ingest.senders_api import router as senders_router
from services.ingest.service import Accepted, Acceptor
from services.ingest.settings import IngestSettings
from services.ingest.twilio_callbacks import router as twilio_router
from shared.api import (
    ApiError,
    api_app,
    document_body_schema,
    install_error_handlers,
    principal_dependency,
    require_json,
)
from shared.auth import KeyCache, Principal, authenticate
from shared.contracts import MessageCommand, MessageCommandEvent, MessageRequest, utcnow
from shared.events import receipt_event
from shared.http_guard import BodyRule, GuardPolicy, RequestGuard
from shared.kafka import YIELD_EVERY, Outgoing, Publisher, rejection
from shared.phones import PhoneError, parse_e164
from shared.providers.base import PayloadError
from shared.providers.herald_http import SIGNATURE_HEADER, parse_receipts, verify_receipts
from shared.signatures import SignatureError
from shared.topics import MESSAGE_COMMANDS

MAX_RECEIPT_BODY = 5 * 1024 * 1024
# Checked against when a receipt names no configured gateway, so that answer costs what a wrong
# signature costs and looks the same (401 signature_invalid or signature_missing).
UNKNOWN_GATEWAY_KEY = secrets.token_bytes(32)


class MessageAnswer(BaseModel):
    message_id: uuid.UUID
    status: str = "accepted"
    encoding: str
    segments: int
    duplicate: bool = Field(False, description="True when an idempotency key matched an earlier request")
    sandbox: bool | None = Field(None, description="Present (true) when sent with a test key: it will not reach a carrier")


class BatchItemAnswer(BaseModel):
    index: int
    message_id: uuid.UUID | None = None
    encoding: str | None = None
    segments: int | None = None
    duplicate: bool | None = None
    error: dict[str, Any] | None = None


class BatchAnswer(BaseModel):
    accepted: int
    rejected: int
    idempotency_key: str = Field(
        description="The batch's key (its Idempotency-Key header, or one made for it): retry with it"
    )
    results: list[BatchItemAnswer]


BATCH_KEY_HEADER = "Idempotency-Key"
BATCH_KEY_DESCRIPTION = (
    "Makes the batch safe to retry: the same batch sent again with the same key (after a 503 or a "
    "lost answer) gives every message the id it got the first time (duplicate: true) and sends none "
    "twice; the key with another batch is 409 idempotency_conflict. Without it ingest makes a key "
    "and returns it in this header and in the answer (also on a 503). Kept like message keys."
)


class RescheduleBody(BaseModel):
    model_config = {"extra": "forbid"}
    send_at: AwareDatetime = Field(description="The new time to send (at most 35 days ahead; quiet hours still apply)")


class CommandAnswer(BaseModel):
    message_id: uuid.UUID
    status: str = Field(description="cancel_requested or reschedule_requested: the outcome shows in the message's status")
    send_at: AwareDatetime | None = None


# Statuses a held message can be cancelled or rescheduled in, and those that mean it is on its way.
HELD_STATUSES = frozenset({"scheduled"})
ON_ITS_WAY = frozenset({"submitted", "unknown", "delivered", "undelivered", "failed", "expired"})


class SuppressionBody(BaseModel):
    model_config = {"extra": "forbid"}
    reason: str = Field("opt_out", min_length=1, max_length=64)


def _trace_id(request: Request) -> str:
    value = request.headers.get("x-trace-id", "")
    return value[:64] if value else uuid.uuid4().hex


def guard_policy(settings: IngestSettings) -> GuardPolicy:
    """Body limits per route, and which paths are answered without an API key (shared/http_guard.py)."""
    return GuardPolicy(
        rules=[
            BodyRule.of("POST", r"^/v1/messages$", settings.message_body_max_bytes),
            BodyRule.of("POST", r"^/v1/(messages|events)/batch$", settings.batch_body_max_bytes),
            BodyRule.of("POST", r"^/v1/receipts/[^/]+$", MAX_RECEIPT_BODY),
            BodyRule.of("POST", r"^/v1/contacts/import$", settings.import_body_max_bytes, settings.import_body_timeout_s),
        ],
        default_max_bytes=settings.body_max_bytes,
        # Gateways authenticate these with signatures over the body, not with API keys.
        keyless=[re.compile(r"^/v1/receipts/"), re.compile(r"^/v1/callbacks/")],
    )


router = APIRouter()  # the message routes; create_app mounts it first (single sends are the hot path)
writer = Depends(principal_dependency("messages:write"))
suppressor = Depends(principal_dependency("suppressions:write"))


async def _limit(request: Request, principal: Principal, messages: int) -> None:
    verdict = await request.app.state.message_limiter.check(
        principal.key_id, messages, principal.requests_per_minute, principal.messages_per_minute
    )
    if not verdict.allowed:
        metrics.RATE_LIMITED.labels(verdict.limit).inc()
        raise ApiError(
            429,
            "rate_limited",
            f"this API key is over its {verdict.limit} per minute limit; retry in {verdict.retry_after_s}s",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )


async def _publish(publisher: Publisher, outgoing: list[Outgoing], joined: bool = False) -> None:
    try:
        if joined:  # a single send: its record goes out with those of the other requests in flight
            await publisher.publish_joined(outgoing)
        else:
            await publisher.publish(outgoing)
    except Exception as exc:  # broker unreachable: nothing was promised yet
        raise ApiError(503, "broker_unavailable", "could not publish, retry with the same idempotency key") from exc


@router.post(
    "/v1/messages",
    status_code=202,
    response_model=MessageAnswer,
    responses={401: {}, 403: {}, 409: {}, 422: {}, 429: {}, 503: {}},
)
async def send_message(body: MessageRequest, request: Request, principal: Principal = writer,
                       acceptor: Acceptor = Depends(deps.acceptor),
                       publisher: Publisher = Depends(deps.publisher)) -> JSONResponse:
    """Validate one message and queue it. Answers 202 with its id.

    Give a ``body``, or a ``template_id`` (with ``values`` for its ``{{values.<key>}}``
    placeholders): the template is rendered in the recipient's language, as campaigns render it."""
    await _limit(request, principal, 1)
    results, outgoing = await acceptor.prepare(
        principal.tenant_id, [body], source="api", now=utcnow(), trace_id=_trace_id(request), geo=principal.geo,
        sandbox=principal.test, senders=principal.senders,
    )
    result = results[0]
    if isinstance(result, Rejection):
        metrics.REQUESTS_REJECTED.labels(result.code).inc()
        status = 409 if result.code == "idempotency_conflict" else 422
        raise ApiError(status, result.code, result.message, result.details)
    await _publish(publisher, outgoing, joined=True)
    m = result.message
    metrics.MESSAGES_ACCEPTED.labels(m.type.value, "api").inc()
    # The answer as MessageAnswer documents it, written directly (no response-model pass).
    answer = {"message_id": str(m.message_id), "status": "accepted", "encoding": m.encoding,
              "segments": m.segments, "duplicate": result.duplicate}
    if principal.test:
        answer["sandbox"] = True  # a test key: it will not reach a carrier
    return JSONResponse(answer, status_code=202)


def batch_schema(max_messages: int | None = None) -> dict[str, Any]:
    """The batch body's documented schema (the route reads the body itself). The limit is a
    setting: the router documents none, create_app its own (``document_body_schema``)."""
    messages: dict[str, Any] = {"type": "array", "minItems": 1}
    if max_messages is not None:
        messages["maxItems"] = max_messages
    messages["items"] = {"$ref": "#/components/schemas/MessageRequest"}
    return {"type": "object", "required": ["messages"], "additionalProperties": False, "properties": {"messages": messages}}


@router.post(
    "/v1/messages/batch",
    status_code=202,
    response_model=BatchAnswer,
    responses={
        401: {},
        403: {},
        409: {},
        413: {},
        415: {},
        422: {},
        429: {},
        503: {"description": "Not every message could be queued: retry the same batch with the same Idempotency-Key"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": batch_schema()}}}},
)
async def send_batch(
    request: Request,
    principal: Principal = writer,
    idempotency_key: Annotated[
        str | None, Header(alias=BATCH_KEY_HEADER, min_length=1, max_length=128, description=BATCH_KEY_DESCRIPTION)
    ] = None,
    settings: IngestSettings = Depends(deps.ingest_settings),
) -> JSONResponse:
    """Validate up to 10,000 messages. Good ones are queued; bad ones are listed with their reason.

    Retry safely with the same `Idempotency-Key` header (see the parameter)."""
    require_json(request)
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "malformed_json", "body is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or set(body) != {"messages"}:
        raise ApiError(
            422,
            "validation_failed",
            "body must be {\"messages\": [...]}",
            [{"loc": "body.messages", "code": "missing", "msg": "a list of messages is required"}],
        )
    items = body["messages"]
    if not items:
        raise ApiError(422, "empty_batch", "messages must hold at least one message")
    if len(items) > settings.batch_max_messages:
        raise ApiError(
            413, "batch_too_large", f"{len(items)} messages, at most {settings.batch_max_messages} per batch"
        )
    await _limit(request, principal, len(items))
    key = idempotency_key or uuid.uuid4().hex
    async with request.app.state.bulk_work:
        return await _send_batch(items, principal, request, key)


async def _send_batch(items: list[Any], principal: Principal, request: Request, key: str) -> JSONResponse:
    acceptor, repository, publisher = deps.acceptor(request), deps.repository(request), deps.publisher(request)
    parsed: list[MessageRequest | Rejection] = []
    fingerprint = hashlib.sha256()
    for index, item in enumerate(items):
        if index and index % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # a 10,000-message batch must not stall single requests (OTPs)
        fingerprint.update(batch_item_fingerprint(item))
        try:
            parsed.append(parse_request(item))
        except Rejection as rejection_:
            parsed.append(rejection_)
    # The whole batch is one idempotency key (one row): its value is the batch's id, and
    # each message's id derives from it and the message's position.
    batch_key = f"batch:{key}"
    kept = (await repository.reserve_keys(principal.tenant_id, [(batch_key, fingerprint.hexdigest(), uuid.uuid4())]))[
        batch_key
    ]
    if kept.request_hash != fingerprint.hexdigest():
        metrics.REQUESTS_REJECTED.labels("idempotency_conflict").inc()
        raise ApiError(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was already used with another batch",
            [{"loc": f"header.{BATCH_KEY_HEADER}", "code": "idempotency_conflict", "msg": "key reused with another batch"}],
            headers={BATCH_KEY_HEADER: key},
        )
    results, outgoing = await acceptor.prepare(
        principal.tenant_id,
        parsed,
        source="api",
        now=utcnow(),
        trace_id=_trace_id(request),
        message_ids=batch_message_ids(kept.message_id, len(parsed)),
        replayed=not kept.fresh,
        geo=principal.geo,
        sandbox=principal.test, senders=principal.senders,
    )
    answers: list[dict[str, Any]] = []
    accepted = 0
    for index, result in enumerate(results):
        if isinstance(result, Accepted):
            accepted += 1
            m = result.message
            answers.append(
                {
                    "index": index,
                    "message_id": str(m.message_id),
                    "encoding": m.encoding,
                    "segments": m.segments,
                    "duplicate": result.duplicate,
                }
            )
            metrics.MESSAGES_ACCEPTED.labels(m.type.value, "api").inc()
        else:
            metrics.REQUESTS_REJECTED.labels(result.code).inc()
            answers.append({"index": index, "error": result.as_dict()})
    echo = {BATCH_KEY_HEADER: key}
    if accepted == 0:
        raise ApiError(
            422,
            "all_rejected",
            "no message in the batch is valid",
            [a["error"] | {"index": a["index"]} for a in answers[:100]],
            headers=echo,
        )
    try:
        await publisher.publish(outgoing)
    except Exception as exc:  # the broker failed, maybe after part of the batch
        raise ApiError(
            503,
            "broker_unavailable",
            "could not queue every message; retry the same batch with the same Idempotency-Key header "
            "(every message keeps its id, none is sent twice)",
            [{"loc": f"header.{BATCH_KEY_HEADER}", "code": "retry_with", "msg": key}],
            headers={**echo, "Retry-After": "2"},
        ) from exc
    return JSONResponse(
        {"accepted": accepted, "rejected": len(results) - accepted, "idempotency_key": key, "results": answers},
        status_code=202,
        headers=echo,
    )


def _phone(raw: str) -> str:
    try:
        return parse_e164(raw, allowed_types=None).e164
    except PhoneError as exc:
        raise ApiError(422, exc.code, str(exc), [{"loc": "path.phone", "code": exc.code, "msg": str(exc)}]) from None


@router.put("/v1/suppressions/{phone}", responses={401: {}, 403: {}, 422: {}})
async def suppress(
    phone: Annotated[str, Path(max_length=32)],
    principal: Principal = suppressor,
    body: SuppressionBody | None = None,
    repository: IngestRepository = Depends(deps.repository),
) -> dict[str, str]:
    """Never send marketing messages to this number again (opt-out)."""
    e164 = _phone(phone)
    reason = body.reason if body else "opt_out"
    await repository.suppress(principal.tenant_id, e164, reason, "api")
    return {"phone": e164, "status": "suppressed", "reason": reason}


@router.delete("/v1/suppressions/{phone}", status_code=204, responses={401: {}, 403: {}, 404: {}, 422: {}})
async def unsuppress(phone: Annotated[str, Path(max_length=32)], principal: Principal = suppressor,
                     repository: IngestRepository = Depends(deps.repository)) -> Response:
    """Remove a number from the suppression list (the contact opted in again)."""
    if not await repository.unsuppress(principal.tenant_id, _phone(phone)):
        raise ApiError(404, "not_suppressed", "this number is not on the suppression list")
    return Response(status_code=204)


async def _command(principal: Principal, message_id: uuid.UUID, command: MessageCommand, request: Request) -> None:
    status = await deps.repository(request).message_status(principal.tenant_id, message_id)
    if status is None:
        raise ApiError(404, "message_not_found", "no message with this id for your tenant (yet)")
    if status in ON_ITS_WAY:
        raise ApiError(409, "already_sent", f"the message is already on its way (status {status}): it cannot be "
                       "cancelled or rescheduled")
    if status not in HELD_STATUSES:
        raise ApiError(409, "not_scheduled", f"the message is not held for later (status {status}); only a "
                       "scheduled message (send_at, quiet hours) can be cancelled or rescheduled")
    event = MessageCommandEvent(tenant=principal.tenant_id, trace_id=_trace_id(request), payload=command)
    try:
        await deps.publisher(request).publish([Outgoing(MESSAGE_COMMANDS, str(message_id), event)])
    except Exception as exc:
        raise ApiError(503, "broker_unavailable", "could not publish, retry") from exc


@router.delete("/v1/messages/{message_id}", status_code=202, response_model=CommandAnswer,
            responses={401: {}, 403: {}, 404: {}, 409: {}, 503: {}})
async def cancel_message(message_id: uuid.UUID, request: Request, principal: Principal = writer) -> dict[str, Any]:
    """Cancel a message the scheduler still holds (``send_at`` or quiet hours). Answers 202
    ``cancel_requested``; the message then becomes ``suppressed`` with reason
    ``cancelled_by_client``. 409 ``already_sent`` when it is already on its way."""
    await _command(principal, message_id, MessageCommand(message_id=message_id, action="cancel"), request)
    return {"message_id": message_id, "status": "cancel_requested"}


@router.patch("/v1/messages/{message_id}", status_code=202, response_model=CommandAnswer,
           responses={401: {}, 403: {}, 404: {}, 409: {}, 415: {}, 422: {}, 503: {}})
async def reschedule_message(
    message_id: uuid.UUID, body: RescheduleBody, request: Request, principal: Principal = writer
) -> dict[str, Any]:
    """Move a held message to a new ``send_at``. Answers 202 ``reschedule_requested``; its
    timeline then shows ``scheduled`` with the new time. 409 ``already_sent`` when it is on its way."""
    if body.send_at > utcnow() + MAX_SCHEDULE_AHEAD:
        raise ApiError(422, "send_at_too_far", "send_at is more than 35 days ahead",
                       [{"loc": "body.send_at", "code": "send_at_too_far", "msg": "at most 35 days ahead"}])
    command = MessageCommand(message_id=message_id, action="reschedule", send_at=body.send_at)
    await _command(principal, message_id, command, request)
    return {"message_id": message_id, "status": "reschedule_requested", "send_at": body.send_at}


@router.post("/v1/receipts/{gateway}", responses={401: {}, 413: {}, 422: {}})
async def receipts(gateway: Annotated[str, Path(max_length=64)], request: Request,
                   settings: IngestSettings = Depends(deps.ingest_settings),
                   publisher: Publisher = Depends(deps.publisher)) -> dict[str, Any]:
    """Delivery receipts posted by a gateway, signed with its secret for this gateway (X-Herald-Signature v2).

    An unknown gateway gets the same 401 as a wrong signature, so the answer does not tell
    which gateway names exist.
    """
    secret = settings.receipt_secrets.get(gateway)
    raw = await request.body()
    if len(raw) > MAX_RECEIPT_BODY:
        raise ApiError(413, "body_too_large", f"receipt bodies are limited to {MAX_RECEIPT_BODY} bytes")
    try:
        verify_receipts(
            secret.get_secret_value().encode() if secret is not None else UNKNOWN_GATEWAY_KEY,
            raw,
            request.headers.get(SIGNATURE_HEADER),
            gateway=gateway,
            now=time.time(),
            tolerance_s=settings.receipt_tolerance_s,
        )
        if secret is None:
            raise SignatureError("signature_invalid", "signature does not match the body")
    except SignatureError as exc:
        metrics.RECEIPTS.labels(gateway if secret is not None else "unknown", exc.code).inc()
        raise ApiError(401, exc.code, str(exc)) from None
    async with request.app.state.bulk_work:
        try:
            body = json.loads(raw)
            good, bad = parse_receipts(gateway, body)
        except ValueError:
            raise ApiError(422, "malformed_json", "body is not valid JSON") from None
        except PayloadError as exc:
            raise ApiError(422, exc.code, exc.message) from None
        trace = _trace_id(request)
        outgoing = [receipt_event(r, trace) for r in good]
        source = f"receipts:{gateway}"
        outgoing += [
            rejection(source, exc.code, exc.message, json.dumps(item, default=str), errors=exc.details, trace_id=trace)
            for _, exc, item in bad
        ]
        await _publish(publisher, outgoing)
    metrics.RECEIPTS.labels(gateway, "accepted").inc(len(good))
    metrics.RECEIPTS.labels(gateway, "rejected").inc(len(bad))
    return {
        "accepted": len(good),
        "rejected": len(bad),
        "errors": [{"index": i, **exc.as_dict()} for i, exc, _ in bad],
    }


def create_app(
    settings: IngestSettings,
    pool: Any,
    acceptor: Acceptor,
    publisher: Publisher,
    repository: IngestRepository,
) -> FastAPI:
    """The public API. Health and metrics are on the ops port (shared/service.py), the docs only
    where ``HERALD_API_DOCS`` is on."""
    app = api_app(
        title="Herald ingest",
        version="1.0",
        description=(
            "Herald's public API: send SMS (single messages, batches; cancel or reschedule held ones), "
            "suppressions, gateway receipt and provider status callbacks, contacts and their consents, "
            "segments, templates, campaigns (test, launch, pause, resume, cancel), journeys and contact "
            "events, received messages (`/v1/inbound`), erasures, tenant policy, and the short-link "
            "redirect (`/l/{code}`). Message status, search and campaign reports are on the reports API. "
            "Every error code is in docs/errors.md. Swagger UI and ReDoc are served by ingest itself "
            "(/docs/assets): the pages work offline."
        ),
        docs=settings.api_docs,
    )
    deps.install(
        app, settings, pool, publisher, acceptor=acceptor, repository=repository,
        message_limiter=RateLimiter(pool, settings.rate_limit_requests_per_minute,
                                    settings.rate_limit_messages_per_minute, lease=settings.rate_limit_lease),
        # Bulk work shares the event loop with single requests: at most this many batches are
        # worked on at once (each hands the loop back every YIELD_EVERY items), so an OTP waits
        # for a slice or two of them, not for every batch in flight.
        bulk_work=asyncio.Semaphore(settings.batch_concurrency),
    )
    keys = None
    if settings.auth_cache_ttl_s > 0:  # keys in memory, dropped on change (shared/auth.py)
        keys = app.state.keys = KeyCache(pool, settings.database_url.get_secret_value(), settings.auth_cache_ttl_s)
    app.add_middleware(RequestGuard, policy=guard_policy(settings),
                       authenticate=keys.authenticate if keys is not None else partial(authenticate, pool),
                       body_timeout_s=settings.http_body_timeout_s)
    # Requests refused before a route ran count with those the routes refuse (the demo's summary, dashboards).
    install_error_handlers(app, on_invalid=lambda code: metrics.REQUESTS_REJECTED.labels(code).inc())
    app.include_router(router)
    document_body_schema(app, "/v1/messages/batch", batch_schema(settings.batch_max_messages))
    # After the message routes: a request is matched against the routes in order, and single
    # sends are the hot path (no path of these routers overlaps them).
    app.include_router(twilio_router)
    app.include_router(audience_router)
    app.include_router(campaigns_router)
    app.include_router(inbound_router)
    app.include_router(senders_router)
    return app
