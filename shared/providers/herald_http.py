"""Herald's own JSON gateway API (``herald-http``; what the gateway simulator speaks).

Sending (the dispatcher's adapter, ``services/dispatcher/gateways/herald_http.py``, does the
HTTP): ``POST {url}/v1/sms/batch`` with ``{"messages": [{to, from, body, client_ref, segments,
validity_s}]}`` (:func:`batch_item`) answers one result per message (``{client_ref, id,
status: "accepted"}`` or ``{client_ref, error: {code, message}}``); ``GET {url}/v1/sms?client_ref=``
finds earlier submissions. Errors: ``{"error": {"code", "message"}}`` (:func:`error_of`).

Receiving (ingest's ``POST /v1/receipts/{gateway}``): ``{"receipts": [...]}`` or one receipt
object, each ``{id, status, error_code, done_at, client_ref}`` with a Herald receipt status
(:func:`parse_receipts`), signed ``X-Herald-Signature`` v2 bound to the gateway's name
(:func:`verify_receipts`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared.contracts import DeliveryReceipt, MessageOutbound
from shared.errors import field_errors
from shared.providers.base import PayloadError
from shared.signatures import HEADER as SIGNATURE_HEADER
from shared.signatures import verify
from shared.statuses import ReceiptStatus

__all__ = ["RECEIPT_STATUS", "SIGNATURE_HEADER", "batch_item", "error_of", "parse_receipts", "verify_receipts"]

#: A receipt's ``status`` (any case) -> Herald receipt status: the format uses Herald's own values.
RECEIPT_STATUS: dict[str, ReceiptStatus] = {s.value: s for s in ReceiptStatus}


# --- sending ---------------------------------------------------------------------------------


def batch_item(m: MessageOutbound, validity_s: int | None) -> dict[str, Any]:
    """One message of a batch; ``validity_s``: the seconds left (1..36,000), None: no validity."""
    item: dict[str, Any] = {"to": m.to, "body": m.body, "client_ref": str(m.message_id), "segments": m.segments}
    if m.sender:
        item["from"] = m.sender
    if validity_s is not None:
        item["validity_s"] = validity_s
    return item


def error_of(status_code: int, body: Any, reason: str) -> tuple[str, str]:
    """``(code, message)`` of an error answer (``body``: its parsed JSON, None when not JSON);
    ``http_<status>`` when it is not ``{"error": {...}}``."""
    try:
        err = body.get("error", {})
        return str(err.get("code", f"http_{status_code}")), str(err.get("message", reason))
    except AttributeError:
        return f"http_{status_code}", reason


# --- receipts --------------------------------------------------------------------------------


def verify_receipts(secret: bytes, body: bytes, header: str | None, *, gateway: str, now: float, tolerance_s: int) -> None:
    """Raise :class:`shared.signatures.SignatureError` unless ``header`` is a fresh ``v2``
    signature of ``body`` bound to ``gateway`` (a receipt signed for one gateway is refused on another's URL)."""
    verify(secret, body, header, now=now, tolerance_s=tolerance_s, context=gateway)


def parse_receipts(gateway: str, body: Any) -> tuple[list[DeliveryReceipt], list[tuple[int, PayloadError, Any]]]:
    """Split a receipt callback into good receipts and (index, reason, item) for bad ones.

    Raises :class:`PayloadError` when the body is neither a list, ``{"receipts": [...]}`` nor one receipt.
    """
    if isinstance(body, dict) and "receipts" in body:
        items = body["receipts"]
    elif isinstance(body, dict):
        items = [body]
    else:
        items = body
    if not isinstance(items, list):
        raise PayloadError("malformed_receipts", "expected {\"receipts\": [...]} or one receipt object")
    good: list[DeliveryReceipt] = []
    bad: list[tuple[int, PayloadError, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            bad.append((index, PayloadError("malformed_receipt", "a receipt must be an object"), item))
            continue
        status = RECEIPT_STATUS.get(str(item.get("status", "")).lower())
        if status is None:
            bad.append((index, PayloadError("unknown_status", f"unknown receipt status {item.get('status')!r}"), item))
            continue
        try:
            good.append(
                DeliveryReceipt(
                    gateway=gateway,
                    gateway_message_id=item.get("id"),
                    status=status,
                    error_code=item.get("error_code"),
                    raw_status=str(item.get("status")),
                    done_at=item.get("done_at"),
                    client_ref=item.get("client_ref"),
                )
            )
        except ValidationError as exc:
            details = field_errors(exc.errors(include_url=False, include_input=False))
            bad.append((index, PayloadError("invalid_receipt", "receipt is not valid", details), item))
    return good, bad
