"""Keyset pagination: a cursor is the (time, id) position of the last row of a page.

A page is then an index range scan at any depth (no OFFSET), and rows added meanwhile never
shift the pages already read. Used by GET /v1/messages (reports) and GET /v1/inbound (ingest).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime


class InvalidCursor(ValueError):
    """A cursor this API did not give out (error code ``invalid_cursor``)."""


@dataclass(frozen=True)
class Cursor:
    at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = json.dumps({"a": self.at.isoformat(), "m": str(self.id)}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            at = datetime.fromisoformat(raw["a"])
            if at.tzinfo is None:
                raise ValueError("naive")
            return cls(at, uuid.UUID(raw["m"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise InvalidCursor("the cursor is not one this API gave out") from None


def next_cursor(rows: list[dict], limit: int, at: str, id_: str) -> str | None:
    """The cursor after a page (None when the page was not full: it was the last)."""
    if len(rows) < limit:
        return None
    return Cursor(rows[-1][at], rows[-1][id_]).encode()
