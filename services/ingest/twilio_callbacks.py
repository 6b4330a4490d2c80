"""Twilio webhooks: message status callbacks and incoming SMS.

``POST /v1/callbacks/twilio/{gateway}/status`` turns a status callback into a
``DeliveryReceiptEvent`` on the receipts topic; ``POST /v1/callbacks/twilio/{gateway}/inbound``
turns an incoming SMS into an ``InboundMessageEvent`` on the inbound topic and answers an
empty TwiML ``<Response/>``.

Both check ``X-Twilio-Signature`` against the URL Twilio called, rebuilt from the
``public_url`` setting plus the raw path and query, since Herald sits behind proxies that
change the host, scheme and port. The signature, the status map and the parsers are Twilio's
protocol, in :mod:`shared.providers.twilio`; here are the routes.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Request, Response

from services.ingest import deps, metrics
from shared.api import ApiError
from shared.events import inbound_event, receipt_event
from shared.kafka import Outgoing
from shared.providers.base import PayloadError
from shared.providers.twilio import (
    EMPTY_TWIML,
    SIGNATURE_HEADER,
    callback_ref,
    inbound_from,
    receipt_from,
    signature_matches,
)

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024


def called_url(public_url: str, request: Request) -> str:
    """The URL Twilio called: ``public_url`` + the raw (still percent-encoded) path + query."""
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    query = request.scope.get("query_string", b"").decode("latin-1")
    return public_url.rstrip("/") + path + (f"?{query}" if query else "")


def _unprocessable(exc: PayloadError) -> ApiError:
    return ApiError(422, exc.code, exc.message, exc.details)


# --- routes ----------------------------------------------------------------------------------


UNKNOWN_GATEWAY_TOKEN = secrets.token_hex(16)


router = APIRouter(prefix="/v1/callbacks/twilio", tags=["twilio"])


async def verified_form(gateway: str, request: Request) -> list[tuple[str, str]]:
    """The POST parameters, once the gateway is known and the signature is right."""
    settings = deps.ingest_settings(request)
    token = settings.twilio_auth_tokens.get(gateway)
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "body_too_large", f"Twilio callbacks are limited to {MAX_BODY} bytes")
    try:
        params = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise ApiError(422, "malformed_form", "body is not UTF-8 form data") from None
    url = called_url(settings.public_url, request)
    # An unknown gateway is checked against a random token and answered as a wrong
    # signature, so the answer does not tell which gateway names exist.
    matches = signature_matches(token.get_secret_value() if token is not None else UNKNOWN_GATEWAY_TOKEN, url,
                                params, request.headers.get(SIGNATURE_HEADER))
    if token is None or not matches:
        code = "signature_missing" if not request.headers.get(SIGNATURE_HEADER) else "signature_invalid"
        metrics.RECEIPTS.labels(gateway if token is not None else "unknown", code).inc()
        raise ApiError(401, code, f"{SIGNATURE_HEADER} does not match this request (checked against {url})")
    return params


async def publish(request: Request, outgoing: list[Outgoing]) -> None:
    try:
        await deps.publisher(request).publish(outgoing)
    except Exception as exc:  # broker unreachable: answer 5xx, nothing was recorded
        raise ApiError(503, "broker_unavailable", "could not publish, try again") from exc


def trace_id(request: Request) -> str:
    value = request.headers.get("x-trace-id", "")
    return value[:64] if value else uuid.uuid4().hex


@router.post("/{gateway}/status", status_code=204, responses={401: {}, 404: {}, 413: {}, 422: {}, 503: {}})
async def status_callback(gateway: Annotated[str, Path(max_length=64)], request: Request) -> Response:
    """A Twilio message status callback (form-encoded, signed with the account's auth token)."""
    form = dict(await verified_form(gateway, request))
    ref = callback_ref(request.scope.get("query_string", b"").decode("latin-1"))
    try:
        receipt = receipt_from(gateway, form, ref)
    except PayloadError as exc:
        raise _unprocessable(exc) from None
    # Same event id as POST /v1/receipts/{gateway}: the same callback twice is one event.
    await publish(request, [receipt_event(receipt, trace_id(request))])
    metrics.RECEIPTS.labels(gateway, "accepted").inc()
    return Response(status_code=204)


@router.post(
    "/{gateway}/inbound",
    response_class=Response,
    responses={200: {"content": {"text/xml": {}}}, 401: {}, 404: {}, 413: {}, 422: {}, 503: {}},
)


async def inbound(gateway: Annotated[str, Path(max_length=64)], request: Request) -> Response:
    """An SMS sent to one of the account's numbers (Twilio's incoming message webhook)."""
    form = dict(await verified_form(gateway, request))
    try:
        message = inbound_from(gateway, form)
    except PayloadError as exc:
        raise _unprocessable(exc) from None
    await publish(request, [inbound_event(message, trace_id(request))])
    return Response(EMPTY_TWIML, media_type="text/xml")
