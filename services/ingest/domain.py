"""ingest's pure logic: turn a request into an accepted message, or say precisely why not."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from shared.contracts import MessageAccepted, MessageRequest
from shared.contracts.messages import SenderThrottle
from shared.errors import field_errors, top_level_code
from shared.geo import REFUSAL as GEO_REFUSAL
from shared.geo import GeoPolicy, GeoRules
from shared.geo import refusal as geo_refusal
from shared.phones import PhoneError, parse_e164
from shared.senders import PoolChoice, Refusal, SenderBook, SenderRules, choose_from_pool, load_rules, throttle_of
from shared.senders import carrier_ids as sender_carrier_ids
from shared.senders import check as sender_check
from shared.sms.encoding import analyse
from shared.statuses import MessageType
from shared.templates import opt_out_line

MAX_SCHEDULE_AHEAD = timedelta(days=35)


@dataclass(frozen=True)
class Rejection(Exception):
    code: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


def request_hash(request: MessageRequest) -> str:
    """A stable fingerprint of a request: the same key with another payload is a conflict."""
    # Fields added later are left out when unset, so hashes of requests that predate them do not change.
    later = ("track_links", "body", "template_id", "template_version", "values", "sender_pool")
    exclude = ({"idempotency_key"} | {name for name in later if getattr(request, name) is None}
               | (set() if request.secret else {"secret"}))
    canonical = json.dumps(request.model_dump(mode="json", exclude=exclude), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def batch_message_ids(batch_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    """The id of each message of a batch: derived from the batch's id (kept under its
    Idempotency-Key) and the message's position, so a batch sent again with the same key
    gives every message the id it got the first time."""
    return [uuid.uuid5(batch_id, str(index)) for index in range(count)]


def batch_item_fingerprint(item: Any) -> bytes:
    """One item's share of a batch's fingerprint (the same key with another batch is a conflict)."""
    return json.dumps(item, sort_keys=True, separators=(",", ":"), default=str).encode() + b"\n"


def accept(
    request: MessageRequest,
    *,
    message_id: uuid.UUID,
    now: datetime,
    source: Literal["api", "kafka", "journey"],
    allowed_types: Iterable[str],
    smart_encoding: bool,
    geo: GeoPolicy | None = None,
    geo_rules: GeoRules | None = None,
    opt_out: OptOut | None = None,
    senders: SenderBook | None = None,
    sender_rules: SenderRules | None = None,
    sticky: Mapping[tuple[str, str], str] | None = None,
) -> MessageAccepted:
    """Validate the recipient and measure the text; raise :class:`Rejection` if it cannot be sent.

    ``opt_out``: for marketing, the tenant's mode and its contacts' languages; a text without an
    opt-out instruction gets one in the recipient's language, or is refused (``opt_out_missing``).

    ``geo``: the tenant's geo permissions (shared/geo.py), checked against the number's country
    with ``geo_rules``; None skips the check.

    ``senders``: the tenant's sender registry (shared/senders.py); a message that names a
    ``sender`` must name one of its verified senders, allowed for the destination by the
    sender's countries and ``sender_rules``. None skips the check (a reply from the number
    the handset wrote to); a message without a sender goes out from the gateway's default.

    ``sticky``: (pool, recipient E.164) -> the sender the recipient got from that pool before. A
    message naming a ``sender_pool`` gets one of the pool's senders (shared/senders.py,
    ``choose_from_pool``): the sticky one while it may send, else a fallback in pool order; the
    choice is on the message (``sender_choice``, for its timeline).
    """
    if request.send_at is not None and request.send_at > now + MAX_SCHEDULE_AHEAD:
        raise Rejection(
            "send_at_too_far",
            "send_at is more than 35 days ahead",
            [{"loc": "send_at", "code": "send_at_too_far", "msg": "at most 35 days ahead"}],
        )
    try:
        phone = parse_e164(request.to, allowed_types)
    except PhoneError as exc:
        raise Rejection(exc.code, str(exc), [{"loc": "to", "code": exc.code, "msg": str(exc)}]) from None
    routed = route(phone.e164, phone.country, sender=request.sender, sender_pool=request.sender_pool, geo=geo,
                   geo_rules=geo_rules, senders=senders, sender_rules=sender_rules, sticky=sticky)
    body = request.body
    if body is None:  # a template's request is rendered before (services/ingest/template_sends.py)
        raise Rejection("template_or_body", "give a body or a template_id",
                        [{"loc": "body", "code": "template_or_body", "msg": "no body"}])
    if opt_out is not None and request.type is MessageType.MARKETING:
        line = opt_out_line(body, opt_out.languages.get(phone.e164), phone.country)
        if line is not None:
            if opt_out.mode == "refuse":
                raise Rejection(OPT_OUT_MISSING, "a marketing message must tell how to opt out (e.g. 'Reply STOP to opt "
                                "out'); this tenant refuses marketing without one",
                                [{"loc": "body", "code": OPT_OUT_MISSING, "msg": f"add: {line}"}])
            body = body.rstrip() + "\n" + line
    info = analyse(body, smart=smart_encoding)
    # Every field is validated (the request) or computed here: skip a second validation.
    return MessageAccepted.model_construct(
        message_id=message_id,
        to=phone.e164,
        country=phone.country,
        body=info.text,
        sender=routed.sender,
        type=request.type,
        encoding=info.encoding,
        segments=info.segments,
        idempotency_key=request.idempotency_key,
        metadata=request.metadata,
        status_callback_url=str(request.status_callback_url) if request.status_callback_url else None,
        source=source,
        accepted_at=now,
        expires_at=now + timedelta(seconds=request.validity_s) if request.validity_s else None,
        send_at=request.send_at,
        secret=request.secret,
        carrier_ids=routed.carrier_ids,
        sender_throttle=routed.throttle,
        sender_pool=routed.pool,
        sender_choice=routed.choice,
    )


@dataclass(frozen=True, slots=True)
class Route:
    """Who sends a message to its number: the sender (None: the gateway's default), the carrier
    registration ids that go with it, its contracted throughput, and the pool and choice when it
    came from a sender pool."""

    sender: str | None
    carrier_ids: dict[str, str] = field(default_factory=dict)
    throttle: SenderThrottle | None = None
    pool: str | None = None
    choice: dict[str, str] = field(default_factory=dict)


def route(
    e164: str,
    country: str,
    *,
    sender: str | None,
    sender_pool: str | None = None,
    geo: GeoPolicy | None = None,
    geo_rules: GeoRules | None = None,
    senders: SenderBook | None = None,
    sender_rules: SenderRules | None = None,
    sticky: Mapping[tuple[str, str], str] | None = None,
) -> Route:
    """The per-message checks every accepted message passes, whichever way it came (the API, the
    trigger topic, a journey's send step, a campaign's page): the tenant's geo permissions for the
    number's ``country``, then its sender, picked from ``sender_pool`` (sticky per recipient) or
    named, checked against the tenant's registry. Raises :class:`Rejection` with the API's reason
    code. ``geo``/``senders`` None: not checked (see :func:`accept`)."""
    if geo is not None:
        reason = geo_refusal(geo, country, geo_rules or GeoRules())
        if reason is not None:
            raise Rejection(GEO_REFUSAL, reason, [{"loc": "to", "code": GEO_REFUSAL, "msg": reason}])
    choice: PoolChoice | None = None
    if sender_pool is not None:
        picked = choose_from_pool(senders or SenderBook(), sender_pool, e164, country,
                                  sender_rules or load_rules(), (sticky or {}).get((sender_pool, e164)))
        if isinstance(picked, Refusal):
            raise Rejection(picked.code, picked.message,
                            [{"loc": "sender_pool", "code": picked.code, "msg": picked.message}])
        choice = picked
        sender = picked.sender
    pool, detail = (choice.pool, choice.detail()) if choice is not None else (None, {})
    if senders is None or sender is None or sender_rules is None:
        return Route(sender, pool=pool, choice=detail)
    refused = sender_check(senders, sender, country, sender_rules)
    if refused is not None:
        raise Rejection(refused.code, refused.message, [{"loc": "sender", "code": refused.code, "msg": refused.message}])
    return Route(sender, sender_carrier_ids(senders, sender, country, sender_rules), sender_throttle(senders, sender),
                 pool, detail)


def sender_throttle(senders: SenderBook, sender: str) -> SenderThrottle | None:
    """The contracted throughput of a message's sender, carried to the dispatcher (None: none)."""
    found = throttle_of(senders, sender)
    if found is None:
        return None
    kind, rate, burst = found
    return SenderThrottle.model_construct(kind=kind, rate_per_s=rate, burst=burst)


OPT_OUT_MISSING = "opt_out_missing"


@dataclass(frozen=True)
class OptOut:
    """How raw marketing texts get their opt-out line: ``mode`` 'append' or 'refuse', and the
    language of each number that is a contact with one."""

    mode: str
    languages: dict[str, str] = field(default_factory=dict)


def parse_request(item: Any) -> MessageRequest:
    """Validate one batch item; raise :class:`Rejection` with field-level details."""
    try:
        return MessageRequest.model_validate(item)
    except ValidationError as exc:
        details = field_errors(exc.errors(include_url=False, include_input=False))
        raise Rejection(top_level_code(details), "message is not valid", details) from None
