"""GET /v1/inbound: the messages a tenant's numbers received (replies, STOP/START/HELP), newest
first, with filters and cursor pages (shared/pagination.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query, Request

from shared.api import ApiError, principal_dependency
from shared.auth import Principal
from shared.pagination import Cursor, InvalidCursor, next_cursor
from shared.phones import PhoneError, parse_e164

MAX_PAGE = 1000
COLUMNS = ("event_id", "phone_e164", "recipient", "scope", "body", "keyword_group", "received_at")


def inbound_sql(tenant: str, phone: str | None, since: datetime | None, until: datetime | None,
                keyword: str | None, after: Cursor | None, limit: int) -> tuple[str, list[Any]]:
    """A page's SQL (newest first) and its arguments; every filter is a parameter."""
    args: list[Any] = [tenant]
    where = ["tenant_id = $1"]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if phone is not None:
        where.append(f"phone_e164 = {arg(phone)}")
    if since is not None:
        where.append(f"received_at >= {arg(since)}")
    if until is not None:
        where.append(f"received_at < {arg(until)}")
    if keyword == "none":
        where.append("keyword_group IS NULL")
    elif keyword is not None:
        where.append(f"keyword_group = {arg(keyword)}")
    if after is not None:
        where.append(f"(received_at, event_id) < ({arg(after.at)}, {arg(after.id)})")
    sql = (f"SELECT {', '.join(COLUMNS)} FROM inbound_messages WHERE {' AND '.join(where)}"
           f" ORDER BY received_at DESC, event_id DESC LIMIT {arg(limit)}")
    return sql, args


def _problem(code: str, message: str, loc: str) -> ApiError:
    return ApiError(422, code, message, [{"loc": loc, "code": code, "msg": message}])


SEARCH_TIMEOUT_MS = 5000  # a search that takes longer answers 422 query_too_broad
router = APIRouter()
reader = Depends(principal_dependency("messages:read"))


@router.get("/v1/inbound", tags=["replies"], responses={401: {}, 403: {}, 422: {}})
async def list_inbound(
    request: Request,
    principal: Principal = reader,
    phone: Annotated[str | None, Query(max_length=32, description="The handset that wrote, E.164")] = None,
    since: Annotated[datetime | None, Query(description="Received at or after (ISO 8601 with zone)")] = None,
    until: Annotated[datetime | None, Query(description="Received before (ISO 8601 with zone)")] = None,
    keyword: Annotated[Literal["stop", "start", "help", "none"] | None,
                       Query(description="Only STOP, START or HELP messages, or none of them (forwarded replies)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """Messages received from handsets, newest first; pages follow ``next_cursor``."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise _problem("timezone_required", f"{name} needs a time zone", f"query.{name}")
    if since is not None and until is not None and since >= until:
        raise _problem("empty_range", "since must be before until", "query.since")
    try:
        e164 = parse_e164(phone, allowed_types=None).e164 if phone else None
        after = Cursor.decode(cursor) if cursor else None
    except PhoneError as exc:
        raise _problem(exc.code, str(exc), "query.phone") from None
    except InvalidCursor as exc:
        raise _problem("invalid_cursor", str(exc), "query.cursor") from None
    sql, args = inbound_sql(principal.tenant_id, e164, since, until, keyword, after, limit)
    try:
        async with request.app.state.pool.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {int(SEARCH_TIMEOUT_MS)}")
            rows = [dict(r) for r in await conn.fetch(sql, *args)]
    except asyncpg.QueryCanceledError:
        raise _problem("query_too_broad", "the search took too long: narrow it (since/until, phone)", "query") from None
    shown = [{k: (v.isoformat() if isinstance(v, datetime) else str(v) if k == "event_id" else v)
              for k, v in r.items()} for r in rows]
    return {"inbound": shown, "next_cursor": next_cursor(rows, limit, "received_at", "event_id")}
