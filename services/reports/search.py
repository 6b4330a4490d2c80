"""Finding a tenant's messages: filters, keyset pagination and export rows (pure logic, no I/O).

Messages are listed newest first by ``(accepted_at, message_id)``; a cursor is the position of
the last message of a page, so a page costs an index range scan whatever the depth (no
OFFSET), and messages accepted meanwhile never shift the pages already read.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.pagination import Cursor, InvalidCursor
from shared.pagination import next_cursor as _next_cursor
from shared.statuses import Status

MAX_PAGE = 1000
MAX_METADATA_FILTERS = 5
STATUSES = frozenset(s.value for s in Status)

# What a listed message carries: the message view without its timeline.
LIST_COLUMNS = (
    "message_id", "status", "reason_code", "reason", "to_e164", "country", "type", "sender", "encoding", "segments",
    "source", "idempotency_key", "metadata", "gateway", "gateway_message_id", "accepted_at", "submitted_at",
    "final_at", "contact_id", "campaign_id", "variant", "journey_id", "template_id", "template_version",
)


class SearchError(ValueError):
    def __init__(self, code: str, message: str, loc: str) -> None:
        super().__init__(message)
        self.code = code
        self.loc = loc


@dataclass(frozen=True)
class MessageQuery:
    tenant_id: str
    statuses: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    to: str | None = None
    campaign_id: uuid.UUID | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    after: Cursor | None = None


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    """``key=value`` filters on metadata (all must match)."""
    if len(pairs) > MAX_METADATA_FILTERS:
        raise SearchError("too_many_filters", f"at most {MAX_METADATA_FILTERS} metadata filters", "query.metadata")
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or "\x00" in pair:
            raise SearchError("invalid_metadata_filter", "a metadata filter is key=value (no NUL characters)",
                              "query.metadata")
        out[key] = value
    return out


def parse_statuses(values: list[str]) -> tuple[str, ...]:
    unknown = sorted(set(values) - STATUSES)
    if unknown:
        raise SearchError("unknown_status_filter", f"unknown status {', '.join(unknown)} (one of: {', '.join(sorted(STATUSES))})",
                          "query.status")
    return tuple(dict.fromkeys(values))


def check_range(since: datetime | None, until: datetime | None) -> None:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise SearchError("timezone_required", f"{name} needs a time zone (e.g. 2026-12-05T10:00:00Z)", f"query.{name}")
    if since is not None and until is not None and since >= until:
        raise SearchError("empty_range", "since must be before until", "query.since")


def build_sql(query: MessageQuery, limit: int) -> tuple[str, list[Any]]:
    """The page's SQL (newest first) and its arguments."""
    args: list[Any] = [query.tenant_id]
    where = ["tenant_id = $1", "status_rank > 0", "accepted_at IS NOT NULL"]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.statuses:
        where.append(f"status = ANY({arg(list(query.statuses))}::text[])")
    if query.since is not None:
        where.append(f"accepted_at >= {arg(query.since)}")
    if query.until is not None:
        where.append(f"accepted_at < {arg(query.until)}")
    if query.to is not None:
        where.append(f"to_e164 = {arg(query.to)}")
    if query.campaign_id is not None:
        where.append(f"campaign_id = {arg(query.campaign_id)}")
    if query.metadata:
        where.append(f"metadata @> {arg(dict(query.metadata))}::jsonb")  # the pool encodes jsonb
    if query.after is not None:
        where.append(f"(accepted_at, message_id) < ({arg(query.after.at)}, {arg(query.after.id)})")
    sql = (f"SELECT {', '.join(LIST_COLUMNS)} FROM messages WHERE {' AND '.join(where)}"
           f" ORDER BY accepted_at DESC, message_id DESC LIMIT {arg(limit)}")
    return sql, args


def row_out(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the API shows it (JSON types)."""
    out = {}
    for key in LIST_COLUMNS:
        value = row.get(key)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID):
            value = str(value)
        elif key == "metadata" and isinstance(value, str):
            value = json.loads(value)
        out[key] = value
    return out


def next_cursor(rows: list[dict[str, Any]], limit: int) -> str | None:
    return _next_cursor(rows, limit, "accepted_at", "message_id")


def decode_cursor(text: str) -> Cursor:
    try:
        return Cursor.decode(text)
    except InvalidCursor as exc:
        raise SearchError("invalid_cursor", str(exc), "query.cursor") from None


def csv_lines(rows: list[dict[str, Any]], header: bool) -> str:
    """Rows as CSV (metadata as JSON in one column)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(LIST_COLUMNS)
    for row in rows:
        shown = row_out(row)
        writer.writerow(["" if shown[k] is None else json.dumps(shown[k]) if k == "metadata" else shown[k]
                         for k in LIST_COLUMNS])
    return buffer.getvalue()


def ndjson_lines(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row_out(r), separators=(",", ":")) + "\n" for r in rows)
