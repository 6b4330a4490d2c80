"""Signed Kafka input: which tenant an event on the triggers or contact-events topic may speak for.

Anything that can write to a shared topic could name any tenant in the envelope. Each tenant
therefore gets Kafka input keys (``herald admin kafka-key create TENANT``): a key id and a
secret. A producer puts two headers on every record:

- ``herald-key``: the key id;
- ``herald-signature``: ``v1=`` and the hex HMAC-SHA256 of the record's value (the exact bytes
  published) under the secret.

ingest accepts the event only when the signature checks out and the key belongs to the tenant
the envelope names (docs/topics.md, "Signed input"); anything else goes to the rejected topic
with its reason. A replayed record is the same event id, which ingest never sends twice.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

KEY_HEADER = "herald-key"
SIGNATURE_HEADER = "herald-signature"
SECRET_PREFIX = "hksec_"


def new_kafka_key() -> tuple[str, str]:
    """(key id, secret): the secret is shown once, to be configured in the producer."""
    return f"kk_{secrets.token_hex(6)}", SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, value: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), value, hashlib.sha256).hexdigest()


def signed_headers(key_id: str, secret: str, value: bytes) -> list[tuple[str, bytes]]:
    """The headers a producer adds to a record whose value is ``value``."""
    return [(KEY_HEADER, key_id.encode()), (SIGNATURE_HEADER, sign(secret, value).encode())]


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


def valid(secret: str, value: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, value), signature)
