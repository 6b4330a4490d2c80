"""HMAC-SHA256 signatures for webhooks (gateway receipts in, status callbacks out).

Header format, Stripe-style so a timestamp is bound into the MAC and replays are refused::

    X-Herald-Signature: t=1764000000,v1=5f2b...e9

``v1`` is ``hex(HMAC_SHA256(secret, f"{t}.".encode() + body))`` (status webhooks Herald posts).

``v2`` also binds the name of the endpoint it was made for (the gateway of a receipt post):
``hex(HMAC_SHA256(secret, f"{t}.{context}.".encode() + body))``, so a receipt signed for one
gateway is refused on another gateway's URL even when both share a secret.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Herald-Signature"
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """The signature is missing, malformed, stale or wrong. ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _mac(secret: bytes, timestamp: int, body: bytes, context: str | None = None) -> str:
    prefix = f"{timestamp}." if context is None else f"{timestamp}.{context}."
    return hmac.new(secret, prefix.encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int, context: str | None = None) -> str:
    """The header value for ``body`` signed at ``timestamp`` (unix seconds); ``v2`` bound to ``context``."""
    if context is None:
        return f"t={timestamp},v1={_mac(secret, timestamp, body)}"
    return f"t={timestamp},v2={_mac(secret, timestamp, body, context)}"


def verify(
    secret: bytes,
    body: bytes,
    header: str | None,
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    context: str | None = None,
) -> None:
    """Raise :class:`SignatureError` unless ``header`` is a fresh, valid signature of ``body``.

    With ``context`` only a ``v2`` signature bound to it is accepted.
    """
    if not header:
        raise SignatureError("signature_missing", f"{HEADER} header is required")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError("signature_malformed", f"{HEADER} must look like t=...,v1=...")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError("signature_malformed", f"{HEADER} lacks an integer t=") from None
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError("signature_expired", f"signature timestamp is more than {tolerance_s}s away")
    expected = _mac(secret, timestamp, body, context)
    scheme = "v1" if context is None else "v2"
    if not any(hmac.compare_digest(expected, candidate) for candidate in parts.get(scheme, [])):
        raise SignatureError("signature_invalid", "signature does not match the body")


# Secrets that were published (in this repository's docs, defaults or manifests): a service
# refuses to start with one of them, since anyone could forge what it protects.
PUBLISHED_SECRETS = frozenset({"sim-receipt-secret", "sim-token", "secret", "changeme", "change-me", "password"})
PLACEHOLDER = "REPLACE_ME"
MIN_SECRET_LENGTH = 16


def unsafe_secret(value: str) -> str | None:
    """Why ``value`` must not be used as a signing secret, or None when it may."""
    if value.strip().lower() in PUBLISHED_SECRETS:
        return "it is a published default"
    if PLACEHOLDER in value:
        return f"it is a {PLACEHOLDER} placeholder"
    if len(value) < MIN_SECRET_LENGTH:
        return f"it is shorter than {MIN_SECRET_LENGTH} characters"
    return None
