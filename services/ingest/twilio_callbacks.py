"""Twilio webhooks: message status callbacks and incoming SMS.

``POST /v1/callbacks/twilio/{gateway}/status`` turns a status callback into a
``DeliveryReceiptEvent`` on the receipts topic; ``POST /v1/callbacks/twilio/{gateway}/inbound``
turns an incoming SMS into an ``InboundMessageEvent`` on the inbound topic and answers an
empty TwiML ``<Response/>``.

Both check ``X-Twilio-Signature``: base64(HMAC-SHA1(auth token, URL + every POST parameter
sorted by name, name and value concatenated)). The URL is the one Twilio called, rebuilt
from the ``public_url`` setting plus the raw path and query, since Herald sits behind proxies
that change the host, scheme and port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

from fastapi import APIRouter, Path, Request, Response
from pydantic import ValidationError

from services.ingest import metrics
from services.ingest.settings import IngestSettings
from shared.api import ApiError
from shared.contracts import (
    DeliveryReceipt,
    InboundMessage,
    utcnow,
)
from shared.errors import field_errors
from shared.events import inbound_event, receipt_event
from shared.kafka import Outgoing, Publisher
from shared.statuses import ReceiptStatus

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
MAX_BODY = 256 * 1024
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

#: Twilio MessageStatus -> Herald receipt status. Anything else is kept as ``unknown``
#: (informational) with its raw value, since Twilio adds statuses without notice.
STATUS_MAP: dict[str, ReceiptStatus] = {
    "accepted": ReceiptStatus.ACCEPTED,  # a Messaging Service took it
    "scheduled": ReceiptStatus.ACCEPTED,
    "queued": ReceiptStatus.ACCEPTED,
    "sending": ReceiptStatus.ENROUTE,
    "sent": ReceiptStatus.ENROUTE,  # handed to the carrier
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.DELIVERED,  # channels with read receipts; read implies delivered
    "undelivered": ReceiptStatus.UNDELIVERED,
    "failed": ReceiptStatus.FAILED,
    "canceled": ReceiptStatus.FAILED,  # a scheduled message canceled before sending
}


# --- signature -------------------------------------------------------------------------------


def compute_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature of a form POST to ``url``.

    Parameters are sorted by name (then value, for repeated names) and appended as
    name + value with no separator; HMAC-SHA1 keyed with the auth token, base64.
    """
    data = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _port_variants(url: str) -> list[str]:
    """``url`` as given, plus without its port or with the default port added.

    As Twilio's own validators (twilio-python): Twilio may sign with or without the port.
    """
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.username or parts.password:
        userinfo = parts.username or ""
        if parts.password is not None:
            userinfo += f":{parts.password}"
        host = f"{userinfo}@{host}"
    if parts.port is not None:
        return [url, urlunsplit(parts._replace(netloc=host))]
    if default is not None:
        return [url, urlunsplit(parts._replace(netloc=f"{host}:{default}"))]
    return [url]


def signature_matches(auth_token: str, url: str, params: list[tuple[str, str]], signature: str | None) -> bool:
    if not signature:
        return False
    given = signature.strip().encode()
    return any(
        hmac.compare_digest(compute_signature(auth_token, candidate, params).encode(), given)
        for candidate in _port_variants(url)
    )


def called_url(public_url: str, request: Request) -> str:
    """The URL Twilio called: ``public_url`` + the raw (still percent-encoded) path + query."""
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    query = request.scope.get("query_string", b"").decode("latin-1")
    return public_url.rstrip("/") + path + (f"?{query}" if query else "")


# --- parsing ----------------------------------------------------------------------------------


def _missing(names: list[str]) -> ApiError:
    return ApiError(
        422,
        "validation_failed",
        f"missing Twilio parameter(s): {', '.join(names)}",
        [{"loc": f"form.{n}", "code": "missing", "msg": "field required"} for n in names],
    )


def _invalid(exc: ValidationError) -> ApiError:
    return ApiError(422, "validation_failed", "Twilio parameters are not valid", field_errors(exc.errors(include_url=False, include_input=False)))


def _raw_dlr_done(value: str | None) -> datetime | None:
    """``RawDlrDoneDate`` (YYMMDDhhmm[ss], UTC, as the carrier gave it) or None."""
    fmt = {10: "%y%m%d%H%M", 12: "%y%m%d%H%M%S"}.get(len(value or ""))
    if fmt is None or not value or not value.isdigit():
        return None
    try:
        return datetime.strptime(value, fmt).replace(tzinfo=UTC)
    except ValueError:
        return None


def receipt_from(gateway: str, form: dict[str, str], ref: str | None) -> DeliveryReceipt:
    """The normalised receipt of a status callback (raises ApiError 422 when incomplete)."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    raw = form.get("MessageStatus") or form.get("SmsStatus")
    missing = [n for n, v in (("MessageSid", sid), ("MessageStatus", raw)) if not v]
    if missing:
        raise _missing(missing)
    assert sid is not None and raw is not None
    status = STATUS_MAP.get(raw.lower(), ReceiptStatus.UNKNOWN)
    try:
        return DeliveryReceipt(
            gateway=gateway,
            gateway_message_id=sid,
            status=status,
            error_code=form.get("ErrorCode") or None,
            raw_status=raw,
            done_at=_raw_dlr_done(form.get("RawDlrDoneDate")) if status in (ReceiptStatus.DELIVERED, ReceiptStatus.UNDELIVERED) else None,
            client_ref=ref or None,
        )
    except ValidationError as exc:
        raise _invalid(exc) from None


def inbound_from(gateway: str, form: dict[str, str]) -> InboundMessage:
    missing = [n for n in ("MessageSid", "From", "To", "Body") if n not in form or (n != "Body" and not form[n])]
    if missing:
        raise _missing(missing)
    try:
        return InboundMessage(
            gateway=gateway,
            gateway_message_id=form["MessageSid"],
            sender=form["From"],
            recipient=form["To"],
            body=form["Body"],
            received_at=utcnow(),
        )
    except ValidationError as exc:
        raise _invalid(exc) from None


# --- routes ----------------------------------------------------------------------------------


UNKNOWN_GATEWAY_TOKEN = secrets.token_hex(16)


def create_router(settings: IngestSettings, publisher: Publisher) -> APIRouter:
    router = APIRouter(prefix="/v1/callbacks/twilio", tags=["twilio"])

    async def verified_form(gateway: str, request: Request) -> list[tuple[str, str]]:
        """The POST parameters, once the gateway is known and the signature is right."""
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

    async def publish(outgoing: list[Outgoing]) -> None:
        try:
            await publisher.publish(outgoing)
        except Exception as exc:  # broker unreachable: answer 5xx, nothing was recorded
            raise ApiError(503, "broker_unavailable", "could not publish, try again") from exc

    def trace_id(request: Request) -> str:
        value = request.headers.get("x-trace-id", "")
        return value[:64] if value else uuid.uuid4().hex

    @router.post("/{gateway}/status", status_code=204, responses={401: {}, 404: {}, 413: {}, 422: {}, 503: {}})
    async def status_callback(gateway: Annotated[str, Path(max_length=64)], request: Request) -> Response:
        """A Twilio message status callback (form-encoded, signed with the account's auth token)."""
        form = dict(await verified_form(gateway, request))
        ref = parse_qs(request.scope.get("query_string", b"").decode("latin-1")).get("ref", [None])[0]
        receipt = receipt_from(gateway, form, ref)
        # Same event id as POST /v1/receipts/{gateway}: the same callback twice is one event.
        await publish([receipt_event(receipt, trace_id(request))])
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
        message = inbound_from(gateway, form)
        await publish([inbound_event(message, trace_id(request))])
        return Response(EMPTY_TWIML, media_type="text/xml")

    return router
