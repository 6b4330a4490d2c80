"""Twilio Programmable Messaging (REST API 2010-04-01): everything Herald knows of its protocol.

Sending (the dispatcher's adapter, ``services/dispatcher/gateways/twilio.py``, does the HTTP):
``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded, HTTP basic
auth ``AccountSid:AuthToken``, one message per request (:func:`message_form`). Twilio answers
``201`` with the Message resource (its ``sid`` is the gateway message id) or an error
``{"code", "message", "more_info", "status"}`` (:func:`error_of`).

Twilio has no client reference field, so Herald's message id travels in the status callback
URL's query (``?ref=<id>``, :func:`with_ref` / :func:`callback_ref`): Twilio signs the full URL.

Receiving (ingest's routes, ``services/ingest/twilio_callbacks.py``, check and publish): a
status callback becomes a receipt (:func:`receipt_from`, :data:`STATUS_MAP`), an incoming SMS an
inbound message (:func:`inbound_from`); both are signed with ``X-Twilio-Signature``
(:func:`signature_matches`): base64(HMAC-SHA1(auth token, URL + every POST parameter sorted by
name, name and value concatenated)).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError

from shared.contracts import DeliveryReceipt, InboundMessage, MessageOutbound, utcnow
from shared.errors import field_errors
from shared.providers.base import PayloadError
from shared.statuses import ReceiptStatus

API_VERSION = "2010-04-01"
SIGNATURE_HEADER = "X-Twilio-Signature"
#: What Herald answers to an incoming SMS: no reply.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

#: Twilio error codes that mean "not now, nothing was created" (whatever the HTTP status). A
#: 500 / 502 / 504 (Twilio's 20500 included) may come after the message was created: its
#: outcome is unknown and it is looked up, not resent.
RETRIABLE_CODES = {
    20429,  # Too Many Requests: never processed, always safe to retry (Twilio docs)
    21611,  # This 'From' number has exceeded the maximum number of queued messages
    30001,  # Queue overflow
}

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


def receipt_status(raw: str) -> ReceiptStatus:
    """Herald's receipt status for a Twilio MessageStatus (any case); ``unknown`` when new to Herald."""
    return STATUS_MAP.get(raw.lower(), ReceiptStatus.UNKNOWN)


# --- sending ---------------------------------------------------------------------------------


def messages_path(account_sid: str) -> str:
    """The Messages resource of an account (create with POST, list with GET)."""
    return f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"


def message_form(
    m: MessageOutbound,
    *,
    from_number: str | None,
    messaging_service_sid: str | None,
    status_callback_url: str | None,
    validity_s: int | None,
) -> dict[str, str]:
    """The form fields of one message (To, Body, From / MessagingServiceSid, StatusCallback, ValidityPeriod).

    ``from_number``: the sender when the message has none; ``validity_s``: the ValidityPeriod
    (seconds, in Twilio's range 1..36,000), None for Twilio's default.
    """
    fields = {"To": m.to, "Body": m.body}
    sender = m.sender or from_number
    if sender:
        fields["From"] = sender
    if messaging_service_sid:
        fields["MessagingServiceSid"] = messaging_service_sid
    if status_callback_url:
        fields["StatusCallback"] = with_ref(status_callback_url, str(m.message_id))
    if validity_s is not None:
        fields["ValidityPeriod"] = str(validity_s)
    return fields


def with_ref(url: str, message_id: str) -> str:
    """``url`` with ``ref=<message id>`` added to its query (before any ``#fragment``)."""
    parts = urlsplit(url)
    ref = urlencode({"ref": message_id})
    return urlunsplit(parts._replace(query=f"{parts.query}&{ref}" if parts.query else ref))


def callback_ref(query: str) -> str | None:
    """Herald's message id from the query of a status callback URL made by :func:`with_ref`."""
    return parse_qs(query).get("ref", [None])[0]


def error_of(status_code: int, body: Any, reason: str) -> tuple[str, str]:
    """``(code, message)`` of a Twilio error answer (``body``: its parsed JSON, None when not JSON);
    ``http_<status>`` when it is not Twilio's JSON."""
    if isinstance(body, dict) and body.get("code") is not None:
        return str(body["code"]), str(body.get("message") or reason)[:500]
    return f"http_{status_code}", reason


def listed_match(item: Any, to: str, body: str, since: datetime) -> bool:
    """Whether an item of the Messages list is an outbound message to ``to`` with exactly
    ``body``, created at or after ``since`` (or with no readable creation date)."""
    if not isinstance(item, dict) or not item.get("sid"):
        return False
    if item.get("to") != to or item.get("body") != body:
        return False
    if not str(item.get("direction", "outbound-api")).startswith("outbound"):
        return False
    created = _rfc2822(item.get("date_created"))
    return created is None or created >= since


def _rfc2822(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


# --- signature -------------------------------------------------------------------------------


def compute_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature of a form POST to ``url``.

    Parameters are sorted by name (then value, for repeated names) and appended as
    name + value with no separator; HMAC-SHA1 keyed with the auth token, base64.
    """
    data = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def port_variants(url: str) -> list[str]:
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
    """Whether ``signature`` (the header's value) signs a POST of ``params`` to ``url``."""
    if not signature:
        return False
    given = signature.strip().encode()
    return any(
        hmac.compare_digest(compute_signature(auth_token, candidate, params).encode(), given)
        for candidate in port_variants(url)
    )


# --- callbacks -------------------------------------------------------------------------------


def _missing(names: list[str]) -> PayloadError:
    return PayloadError(
        "validation_failed",
        f"missing Twilio parameter(s): {', '.join(names)}",
        [{"loc": f"form.{n}", "code": "missing", "msg": "field required"} for n in names],
    )


def _invalid(exc: ValidationError) -> PayloadError:
    return PayloadError("validation_failed", "Twilio parameters are not valid",
                        field_errors(exc.errors(include_url=False, include_input=False)))


def raw_dlr_done(value: str | None) -> datetime | None:
    """``RawDlrDoneDate`` (YYMMDDhhmm[ss], UTC, as the carrier gave it) or None."""
    fmt = {10: "%y%m%d%H%M", 12: "%y%m%d%H%M%S"}.get(len(value or ""))
    if fmt is None or not value or not value.isdigit():
        return None
    try:
        return datetime.strptime(value, fmt).replace(tzinfo=UTC)
    except ValueError:
        return None


def receipt_from(gateway: str, form: dict[str, str], ref: str | None) -> DeliveryReceipt:
    """The normalised receipt of a status callback (raises :class:`PayloadError` when incomplete).

    ``ref``: Herald's message id from the callback URL (:func:`callback_ref`), if any.
    """
    sid = form.get("MessageSid") or form.get("SmsSid")
    raw = form.get("MessageStatus") or form.get("SmsStatus")
    missing = [n for n, v in (("MessageSid", sid), ("MessageStatus", raw)) if not v]
    if missing:
        raise _missing(missing)
    assert sid is not None and raw is not None
    status = receipt_status(raw)
    try:
        return DeliveryReceipt(
            gateway=gateway,
            gateway_message_id=sid,
            status=status,
            error_code=form.get("ErrorCode") or None,
            raw_status=raw,
            done_at=raw_dlr_done(form.get("RawDlrDoneDate")) if status in (ReceiptStatus.DELIVERED, ReceiptStatus.UNDELIVERED) else None,
            client_ref=ref or None,
        )
    except ValidationError as exc:
        raise _invalid(exc) from None


def inbound_from(gateway: str, form: dict[str, str]) -> InboundMessage:
    """The inbound message of Twilio's incoming SMS webhook (raises :class:`PayloadError` when incomplete)."""
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
