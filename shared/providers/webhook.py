"""The generic JSON webhook provider: one message per request, shaped by configuration.

Each message becomes one JSON body (:func:`build_payload`) from a :class:`WebhookTemplate`
(which body field holds the recipient, sender, text, Herald's reference; dotted names nest) plus
fixed ``static_fields``, optionally signed with ``X-Herald-Signature`` v1, HMAC-SHA256 over the
exact body bytes (:func:`encode_body`, :func:`signature_headers`; the provider checks it with
:func:`shared.signatures.verify`). A 2xx answer carries the provider's id at a dotted path
(:func:`id_at`). The dispatcher's adapter (``services/dispatcher/gateways/webhook.py``) holds the
configuration and does the HTTP. This provider sends no receipts to Herald.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import MessageOutbound
from shared.signatures import HEADER as SIGNATURE_HEADER
from shared.signatures import sign

__all__ = ["NOT_JSON", "SIGNATURE_HEADER", "WebhookTemplate", "build_payload", "encode_body", "error_of", "free", "id_at",
           "signature_headers"]

_MISSING = object()
#: What :func:`error_of` is given for an answer that is not JSON (JSON ``null`` is None).
NOT_JSON = object()


class WebhookTemplate(BaseModel):
    """Names of the body fields (dotted names nest: ``message.text``); None leaves a field out."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field("to", min_length=1)
    sender: str | None = Field("from", min_length=1, description="Left out when the message has no sender")
    body: str = Field("body", min_length=1)
    reference: str | None = Field("reference", min_length=1, description="Herald's message id")
    segments: str | None = Field(None, min_length=1)
    validity: str | None = Field(
        None, min_length=1,
        description="Seconds of validity left at submission (left out when the message has none); None: never sent",
    )

    def names(self) -> list[str]:
        return [n for n in (self.to, self.sender, self.body, self.reference, self.segments, self.validity) if n]


def build_payload(
    template: WebhookTemplate,
    static_fields: dict[str, Any],
    m: MessageOutbound,
    *,
    default_sender: str | None,
    validity_s: int | None,
) -> dict[str, Any]:
    """The JSON body of one message; ``validity_s``: seconds left, None when it has no validity."""
    t = template
    out: dict[str, Any] = json.loads(json.dumps(static_fields))  # a deep copy
    _put(out, t.to, m.to)
    _put(out, t.body, m.body)
    sender = m.sender or default_sender
    if t.sender and sender:
        _put(out, t.sender, sender)
    if t.reference:
        _put(out, t.reference, str(m.message_id))
    if t.segments:
        _put(out, t.segments, m.segments)
    if t.validity and validity_s is not None:
        _put(out, t.validity, validity_s)
    return out


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signature_headers(body: bytes, secret: str | None, header: str, timestamp: int) -> dict[str, str]:
    """The request headers of ``body``: its content type and, with a ``secret``, its signature under ``header``."""
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[header] = sign(secret.encode(), body, timestamp)
    return headers


def _put(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        child = obj.get(key)
        if not isinstance(child, dict):
            child = obj[key] = {}
        obj = child
    obj[leaf] = value


def free(obj: dict[str, Any], path: str) -> bool:
    """True when putting a value at dotted ``path`` in ``obj`` overwrites nothing in it."""
    *parents, leaf = path.split(".")
    for key in parents:
        if key not in obj:
            return True
        if not isinstance(obj[key], dict):
            return False
        obj = obj[key]
    return leaf not in obj


def _get(obj: Any, path: str) -> Any:
    for key in path.split("."):
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and key.isdigit() and int(key) < len(obj):
            obj = obj[int(key)]
        else:
            return _MISSING
    return obj


def id_at(answer: Any, path: str) -> str | None:
    """The provider's message id at dotted ``path`` (list indexes allowed: ``messages.0.id``) of
    an answer; None when it is absent, empty or not a scalar."""
    found = _get(answer, path)
    if found is _MISSING or found is None or found == "" or isinstance(found, (dict, list, bool)):
        return None
    return str(found)


def error_of(status_code: int, body: Any, text: str, reason: str) -> tuple[str, str]:
    """Best effort over the usual shapes: {"error": {"code", "message"}}, {"error": "..."}, {"code", "message"}.

    ``body``: the parsed JSON answer, ``NOT_JSON`` when it is not JSON; ``text``: the raw answer.
    """
    if body is NOT_JSON:
        return f"http_{status_code}", text[:300] or reason
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("code") is not None:
            return str(err["code"]), str(err.get("message", ""))[:500]
        if isinstance(err, str):
            return f"http_{status_code}", err[:500]
        if body.get("code") is not None:
            return str(body["code"]), str(body.get("message", ""))[:500]
    return f"http_{status_code}", reason

