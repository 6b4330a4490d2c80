"""Finding messages (services/reports/search.py): filters, cursors, export rows."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime

import pytest

from services.reports.search import (
    LIST_COLUMNS,
    MessageQuery,
    SearchError,
    build_sql,
    check_range,
    csv_lines,
    decode_cursor,
    ndjson_lines,
    next_cursor,
    parse_metadata,
    parse_statuses,
)
from shared.pagination import Cursor

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def test_every_filter_is_a_parameter_never_text_in_the_sql() -> None:
    cid = uuid.uuid4()
    q = MessageQuery("acme", statuses=("delivered", "failed"), since=T0, until=T0.replace(hour=11), to="+34600000001",
                     campaign_id=cid, metadata={"order": "42'; DROP TABLE messages; --"},
                     after=Cursor(T0.replace(minute=30), uuid.UUID(int=7)))
    sql, args = build_sql(q, 50)
    assert "DROP" not in sql and "+34600000001" not in sql
    assert args == ["acme", ["delivered", "failed"], T0, T0.replace(hour=11), "+34600000001", cid,
                    {"order": "42'; DROP TABLE messages; --"}, T0.replace(minute=30), uuid.UUID(int=7), 50]
    assert sql.endswith("ORDER BY accepted_at DESC, message_id DESC LIMIT $10")
    assert "(accepted_at, message_id) < ($8, $9)" in sql


def test_no_filter_is_the_tenant_only() -> None:
    sql, args = build_sql(MessageQuery("acme"), 100)
    assert args == ["acme", 100] and "tenant_id = $1" in sql


def test_a_cursor_round_trips_and_a_forged_one_is_refused() -> None:
    c = Cursor(T0, uuid.uuid4())
    assert decode_cursor(c.encode()) == c
    for bad in ("nope", "e30", c.encode()[:-3] + "!!!"):
        with pytest.raises(SearchError) as err:
            decode_cursor(bad)
        assert err.value.code == "invalid_cursor"


def test_next_cursor_only_on_a_full_page() -> None:
    rows = [{"accepted_at": T0, "message_id": uuid.UUID(int=i)} for i in range(3)]
    assert next_cursor(rows, 4) is None
    assert Cursor.decode(next_cursor(rows, 3)) == Cursor(T0, uuid.UUID(int=2))


def test_filter_errors_are_specific() -> None:
    with pytest.raises(SearchError, match="unknown status bogus") as err:
        parse_statuses(["delivered", "bogus"])
    assert err.value.code == "unknown_status_filter"
    assert parse_statuses(["delivered", "delivered"]) == ("delivered",)
    with pytest.raises(SearchError) as err:
        parse_metadata(["novalue"])
    assert err.value.code == "invalid_metadata_filter"
    with pytest.raises(SearchError) as err:
        parse_metadata([f"k{i}=v" for i in range(6)])
    assert err.value.code == "too_many_filters"
    assert parse_metadata(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(SearchError) as err:
        parse_metadata(["a=\x00"])  # PostgreSQL's jsonb cannot hold it: a 422, not a failed query
    assert err.value.code == "invalid_metadata_filter"
    with pytest.raises(SearchError) as err:
        check_range(T0, T0)
    assert err.value.code == "empty_range"
    with pytest.raises(SearchError) as err:
        check_range(datetime(2026, 1, 1), None)  # noqa: DTZ001 - the naive time under test
    assert err.value.code == "timezone_required"


def test_export_rows() -> None:
    row = {k: None for k in LIST_COLUMNS} | {"message_id": uuid.UUID(int=1), "status": "delivered",
                                             "metadata": {"order": "4,2"}, "accepted_at": T0}
    parsed = list(csv.reader(io.StringIO(csv_lines([row], header=True))))
    assert parsed[0] == list(LIST_COLUMNS)
    shown = dict(zip(parsed[0], parsed[1], strict=True))
    assert shown["status"] == "delivered" and json.loads(shown["metadata"]) == {"order": "4,2"}
    assert shown["accepted_at"] == T0.isoformat() and shown["reason"] == ""
    line = json.loads(ndjson_lines([row]))
    assert line["message_id"] == str(uuid.UUID(int=1)) and line["metadata"] == {"order": "4,2"}
