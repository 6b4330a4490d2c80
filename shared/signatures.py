"""HMAC-SHA256 signatures for webhooks (gateway receipts in, status callbacks out).

Header format, Stripe-style so a timestamp is bound into the MAC and replays are refused::

    X-Herald-Signature: t=1764000000,v1=5f2b...e9

``v1`` is ``hex(HMAC_SHA256(secret, f"{t}.".encode() + body))``.
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


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """Return the header value for ``body`` signed at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(
    secret: bytes,
    body: bytes,
    header: str | None,
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Raise :class:`SignatureError` unless ``header`` is a fresh, valid signature of ``body``."""
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
    expected = _mac(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", [])):
        raise SignatureError("signature_invalid", "signature does not match the body")
