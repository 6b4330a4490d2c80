"""Subject-access lanes on the real PostgreSQL: reports gathers a big part into chunks under the
byte budget, ingest's parts lane stores each chunk once (redelivered chunks and a second
gathering change nothing in the document), drops chunks of another tenant or of an expired
export, and an expired export loses its number and parts but keeps its audit row."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from services.ingest.audience.subject_access import Exports, PartsHandler, expire
from services.reports.subject_access import reports_gatherer
from services.scheduler.subject_access import scheduler_gatherer
from shared.contracts import SubjectAccessPartEvent, SubjectAccessRequested, SubjectAccessRequestedEvent, utcnow
from shared.erasure import NO_KEYS
from shared.kafka import Incoming
from shared.subject_access_store import GatherHandler
from shared.topics import SUBJECT_ACCESS, SUBJECT_ACCESS_PARTS
from tests.conftest import make_tenant

pytestmark = pytest.mark.integration


async def new_export(pool, tenant: str, phone: str, *, expires_in: timedelta = timedelta(days=7)) -> SubjectAccessRequested:
    now = utcnow()
    request = SubjectAccessRequested(export_id=uuid.uuid4(), phone=phone, requested_by="key-1", requested_at=now)
    await pool.execute(
        "INSERT INTO subject_access_exports (export_id, tenant_id, phone_e164, requested_by, requested_at, expires_at)"
        " VALUES ($1, $2, $3, 'key-1', $4, $5)", request.export_id, tenant, phone, now, now + expires_in)
    return request


def incoming(event) -> Incoming:
    topic = SUBJECT_ACCESS if isinstance(event, SubjectAccessRequestedEvent) else SUBJECT_ACCESS_PARTS
    return Incoming(topic, event, None)


async def test_parts_are_chunked_stored_once_and_assembled(pool) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    other_tenant = (await make_tenant(pool)).tenant_id
    number, other = "+34600000941", "+34600000942"
    for i in range(60):  # about 60 x 1.2 KB of metadata: several 16 KiB chunks
        await pool.execute("INSERT INTO messages (message_id, tenant_id, to_e164, metadata, status, status_rank)"
                           " VALUES ($1, $2, $3, $4, 'delivered', 5)",
                           uuid.uuid4(), tenant, number if i < 50 else other, {"note": f"n{i} " + "x" * 1200})
    request = await new_export(pool, tenant, number)
    event = SubjectAccessRequestedEvent(tenant=tenant, payload=request)

    reports = GatherHandler(pool, "reports", reports_gatherer, max_bytes=16 * 1024)
    first = await reports([incoming(event), incoming(event)])  # the same request twice in a batch: gathered once
    assert len(first) >= 4 and len({e.event.payload.attempt for e in first}) == 1
    assert all(len(e.event.model_dump_json()) < 17 * 1024 for e in first)
    again = await reports([incoming(event)])  # redelivered later: a second gathering
    scheduler = await GatherHandler(pool, "scheduler", scheduler_gatherer)([incoming(event)])
    empty = [SubjectAccessPartEvent(tenant=tenant, payload=e.event.payload.model_copy(update={"service": s}))
             for e in scheduler for s in ("ingest", "dispatcher")]

    parts = PartsHandler(pool)
    events = [e.event for e in [*first, *again, *scheduler]] + empty
    for _ in range(2):  # every chunk delivered twice
        assert await parts([incoming(e) for e in [*events, *events]]) == []
    # a chunk naming another tenant is dropped
    forged = SubjectAccessPartEvent(tenant=other_tenant, payload=first[0].event.payload.model_copy(update={"attempt": uuid.uuid4()}))
    await parts([incoming(forged)])
    stored = await pool.fetchval("SELECT count(*) FROM subject_access_parts WHERE export_id = $1", request.export_id)
    assert stored == len(first) + len(again) + len(scheduler) + len(empty)

    status = await Exports(pool, None, NO_KEYS, 7).status(tenant, request.export_id, utcnow())  # type: ignore[arg-type]
    assert status is not None and status.state == "complete"
    doc = status.assembly.document
    assert len(doc["services"]["reports"]["messages"]) == 50 and doc["counts"]["reports"]["messages"] == 50
    assert other not in json.dumps(doc)
    assert await Exports(pool, None, NO_KEYS, 7).status(other_tenant, request.export_id, utcnow()) is None  # type: ignore[arg-type]


async def test_an_expired_export_keeps_only_its_audit_row(pool) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    live = await new_export(pool, tenant, "+34600000943")
    old = await new_export(pool, tenant, "+34600000944", expires_in=timedelta(seconds=-1))
    late = SubjectAccessPartEvent(tenant=tenant, payload={
        "export_id": old.export_id, "service": "reports", "attempt": uuid.uuid4(), "chunk": 0, "chunks": 1,
        "tables": {"messages": [{"to_e164": "+34600000944"}]}})
    await PartsHandler(pool)([incoming(late)])  # an expired export takes no parts
    assert await pool.fetchval("SELECT count(*) FROM subject_access_parts WHERE export_id = $1", old.export_id) == 0
    await pool.execute("INSERT INTO subject_access_parts (export_id, service, attempt, chunk, chunks, tables)"
                       " VALUES ($1, 'reports', $2, 0, 1, '{}'), ($3, 'reports', $2, 0, 1, '{}')",
                       old.export_id, uuid.uuid4(), live.export_id)
    assert await expire(pool, utcnow()) >= 1
    rows = {r["export_id"]: r for r in await pool.fetch("SELECT * FROM subject_access_exports WHERE tenant_id = $1", tenant)}
    assert (rows[old.export_id]["phone_e164"], rows[old.export_id]["removed_why"], rows[old.export_id]["requested_by"]) == (
        None, "expired", "key-1")
    assert rows[live.export_id]["phone_e164"] == "+34600000943"
    assert await pool.fetchval("SELECT count(*) FROM subject_access_parts WHERE export_id = $1", old.export_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM subject_access_parts WHERE export_id = $1", live.export_id) == 1
    status = await Exports(pool, None, NO_KEYS, 7).status(tenant, old.export_id, utcnow())  # type: ignore[arg-type]
    assert status.state == "expired" and status.assembly is None
