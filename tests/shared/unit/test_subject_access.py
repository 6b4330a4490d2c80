"""Subject-access export, pure parts: chunking a service's rows under a byte budget, and
assembling the chunks ingest received (one complete gathering per service)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.contracts import SubjectAccessPartEvent, SubjectAccessRequested
from shared.subject_access import EXPORT_SERVICES, StoredPart, assemble, chunk_tables, jsonable
from shared.subject_access_store import part_events

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def size(chunk) -> int:
    return len(json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode())


def test_small_part_is_one_chunk_with_empty_tables_named() -> None:
    tables = {"contacts": [{"phone": "+34600000001"}], "links": [], "inbound_messages": []}
    assert chunk_tables(tables, 10_000) == [{"links": [], "inbound_messages": [], "contacts": [{"phone": "+34600000001"}]}]
    assert chunk_tables({}, 100) == [{}]


def test_big_part_is_split_under_the_budget_keeping_every_row_in_order() -> None:
    tables = {
        "messages": [{"message_id": str(uuid.uuid4()), "body": f"text {i} ñ " + "x" * (i % 200)} for i in range(500)],
        "message_events": [{"status": "delivered", "i": i} for i in range(300)],
        "clicks": [],
    }
    budget = 8_000
    chunks = chunk_tables(tables, budget)
    assert len(chunks) > 5
    assert all(size(c) <= budget for c in chunks), [size(c) for c in chunks]
    merged: dict[str, list] = {}
    for c in chunks:
        for name, rows in c.items():
            merged.setdefault(name, []).extend(rows)
    assert merged == tables
    assert "clicks" in chunks[0]


def test_a_row_larger_than_the_budget_travels_alone() -> None:
    big = {"body": "y" * 5_000}
    chunks = chunk_tables({"t": [{"a": 1}, big, {"b": 2}]}, 1_000)
    assert chunks == [{"t": [{"a": 1}]}, {"t": [big]}, {"t": [{"b": 2}]}]
    with pytest.raises(ValueError):
        chunk_tables({}, 0)


def test_part_events_stay_under_the_broker_limit_and_repeat_their_ids() -> None:
    request = SubjectAccessRequested(export_id=uuid.uuid4(), phone="+34600000001", requested_by="k", requested_at=T0)
    rows = [{"body": "z" * 900, "n": i} for i in range(3_000)]  # about 2.8 MB of rows
    attempt = uuid.uuid4()
    events = part_events("reports", "acme", "trace", request, {"messages": rows}, 256 * 1024, attempt)
    assert len(events) >= 11
    for e in events:
        raw = e.event.model_dump_json().encode()
        assert len(raw) < 300 * 1024 < 1_000_000
        assert SubjectAccessPartEvent.model_validate_json(raw) == e.event
        assert e.key == str(request.export_id)
    assert [e.event.payload.chunk for e in events] == list(range(len(events)))
    assert {e.event.payload.chunks for e in events} == {len(events)}
    again = part_events("reports", "acme", "trace", request, {"messages": rows}, 256 * 1024, attempt)
    assert [e.event.event_id for e in again] == [e.event.event_id for e in events]


def part(service: str, tables, *, attempt: uuid.UUID | None = None, chunk: int = 0, chunks: int = 1, at: int = 0):
    return StoredPart(service, attempt or uuid.uuid4(), chunk, chunks, tables, T0 + timedelta(seconds=at))


HEADER = {"export_id": "e", "tenant": "acme", "phone": "+34600000001"}


def test_pending_until_every_service_sent_every_chunk() -> None:
    a = uuid.uuid4()
    parts = [part("ingest", {"contacts": [{"x": 1}]}), part("scheduler", {"journey_runs": []}),
             part("dispatcher", {"dispatch_claims": [{"m": 1}]}),
             part("reports", {"messages": [{"m": 1}]}, attempt=a, chunk=0, chunks=2)]
    first = assemble(parts, HEADER)
    assert (first.complete, first.pending, first.document) == (False, ["reports"], None)
    assert sorted(first.services) == ["dispatcher", "ingest", "scheduler"]
    parts.append(part("reports", {"messages": [{"m": 2}], "clicks": [{"c": 1}]}, attempt=a, chunk=1, chunks=2))
    done = assemble(parts, HEADER)
    assert done.complete and done.pending == []
    doc = done.document
    assert doc["phone"] == "+34600000001" and sorted(doc["services"]) == list(EXPORT_SERVICES)
    assert doc["services"]["reports"] == {"clicks": [{"c": 1}], "messages": [{"m": 1}, {"m": 2}]}
    assert doc["counts"]["reports"] == {"clicks": 1, "messages": 2}


def test_redelivered_chunks_and_gatherings_count_once() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    rows = {"messages": [{"m": 1}]}
    parts = [part(s, {}) for s in ("ingest", "scheduler", "dispatcher")]
    # the first gathering of reports, delivered twice, and a second gathering (a redelivered request)
    # that split differently and came in later
    parts += [part("reports", rows, attempt=a, at=1), part("reports", rows, attempt=a, at=2),
              part("reports", {"messages": [{"m": 1}]}, attempt=b, chunk=0, chunks=2, at=3),
              part("reports", {"messages": [{"m": 9}]}, attempt=b, chunk=1, chunks=2, at=4)]
    doc = assemble(parts, HEADER).document
    assert doc["services"]["reports"] == {"messages": [{"m": 1}]}
    # an attempt whose chunks disagree on their count is not complete
    broken = [part(s, {}) for s in ("ingest", "scheduler", "dispatcher")]
    broken += [part("reports", rows, attempt=a, chunk=0, chunks=1), part("reports", rows, attempt=a, chunk=1, chunks=2)]
    assert assemble(broken, HEADER).pending == ["reports"]


def test_unknown_services_are_ignored() -> None:
    parts = [part(s, {}) for s in EXPORT_SERVICES] + [part("simulator", {"x": [{"y": 1}]})]
    assert sorted(assemble(parts, HEADER).document["services"]) == list(EXPORT_SERVICES)


def test_database_values_become_json() -> None:
    u = uuid.uuid4()
    value = {"at": T0, "id": u, "value": Decimal("25.50"), "nested": [{"d": T0.date()}], "n": None}
    assert jsonable(value) == {"at": T0.isoformat(), "id": str(u), "value": "25.50", "nested": [{"d": "2026-12-05"}],
                               "n": None}
