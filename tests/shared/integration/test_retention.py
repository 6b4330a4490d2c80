"""Retention jobs on the real PostgreSQL (docs/operations.md, "Retention"): expired rows and
day partitions go, fresh ones stay, tenants' own ages are honoured, a second instance never runs
a job at the same time, finished claims lose their text (a secret's at once, through the real
dispatcher and simulator), and migration 0035 carries the timeline into the partitions."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from herald_tools.stack import Ports, Stack
from services.dispatcher.gateways import build_gateway
from services.dispatcher.gateways.herald_http import HeraldHttpConfig
from services.dispatcher.handlers import OutboundHandler, Sender
from services.dispatcher.repository import ClaimRepository
from services.dispatcher.retention import tasks as dispatcher_tasks
from services.dispatcher.settings import DispatcherSettings
from services.ingest.retention import tasks as ingest_tasks
from services.ingest.settings import IngestSettings
from services.reports.domain import from_accepted, from_receipt, from_status
from services.reports.handlers import record
from services.reports.repository import ReportsRepository, fetch_message
from services.reports.retention import tasks as reports_tasks
from services.reports.settings import ReportsSettings
from shared import retention
from shared.contracts import (
    DeliveryReceipt,
    MessageAccepted,
    MessageOutbound,
    MessageOutboundEvent,
    MessageStatusChanged,
    utcnow,
)
from shared.db import migrate, migration_files
from shared.kafka import Incoming
from shared.metrics import RETENTION_LAST_SUCCESS, RETENTION_ROWS
from shared.retention_store import RetentionJob, Run, day_partitions
from shared.settings import RetentionSettings
from shared.statuses import ReceiptStatus, Status
from tests.conftest import Env, make_tenant

pytestmark = pytest.mark.integration
DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
async def fresh_jobs(pool) -> None:
    """Each test starts with no job run yet (the lease rows are per job, in the session database)."""
    await pool.execute("DELETE FROM retention_runs")


async def run_job(pool, service: str, settings, tasks) -> str:
    return await RetentionJob(pool, service, settings, tasks).run_once()


async def set_retention(pool, tenant_id: str, **days: int) -> None:
    await pool.execute("UPDATE tenants SET retention = $2::jsonb WHERE tenant_id = $1", tenant_id, days)


async def ensure_partition(pool, day) -> str:
    name = retention.partition_name("message_events", day)
    start, end = retention.day_start(day), retention.day_start(day + DAY)
    await pool.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF message_events"
                       f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")
    return name


async def message(pool, tenant: str, at: datetime, *, placeholder: bool = False) -> uuid.UUID:
    """A finished message accepted at ``at``: its row, two timeline rows, a delivered webhook row."""
    mid = uuid.uuid4()
    await pool.execute(
        "INSERT INTO messages (message_id, tenant_id, to_e164, status, status_rank, accepted_at, final_at, updated_at)"
        " VALUES ($1, $2, '+34600123456', 'delivered', 5, $3, $3, $4)",
        mid, tenant, None if placeholder else at, at)
    await pool.execute(
        "INSERT INTO message_events (event_id, message_id, status, occurred_at) VALUES ($1, $3, 'accepted', $4),"
        " ($2, $3, 'delivered', $4 + interval '1 minute')", uuid.uuid4(), uuid.uuid4(), mid, at)
    await pool.execute(
        "INSERT INTO webhook_outbox (message_id, seq, tenant_id, event_id, url, payload, state, created_at, finished_at)"
        " VALUES ($1, 1, $2, $3, 'https://example.com/h', '{}', 'delivered', now(), now())", mid, tenant, uuid.uuid4())
    await pool.execute("INSERT INTO webhook_sequences (message_id, seq) VALUES ($1, 1)", mid)
    return mid


async def present(pool, ids: list[uuid.UUID]) -> dict[str, set[uuid.UUID]]:
    out = {}
    for table in ("messages", "message_events", "webhook_outbox", "webhook_sequences"):
        rows = await pool.fetch(f"SELECT DISTINCT message_id FROM {table} WHERE message_id = ANY($1::uuid[])", ids)
        out[table] = {r["message_id"] for r in rows}
    return out


async def test_reports_history_expires_by_partition_and_by_tenant_age(pool) -> None:
    now = utcnow()
    plain, short, long_ = [await make_tenant(pool) for _ in range(3)]
    await set_retention(pool, short.tenant_id, messages=10)
    await set_retention(pool, long_.tenant_id, messages=100)
    today = now.date()
    old_day, mid_day, recent_day = today - 200 * DAY, today - 50 * DAY, today - 20 * DAY
    old_partition = await ensure_partition(pool, old_day)
    mid_partition = await ensure_partition(pool, mid_day)
    await ensure_partition(pool, recent_day)
    noon = lambda d: retention.day_start(d) + timedelta(hours=12)  # noqa: E731
    m = {
        "old_plain": await message(pool, plain.tenant_id, noon(old_day)),
        "old_long": await message(pool, long_.tenant_id, noon(old_day)),
        "mid_plain": await message(pool, plain.tenant_id, noon(mid_day)),
        "mid_long": await message(pool, long_.tenant_id, noon(mid_day)),
        "recent_short": await message(pool, short.tenant_id, noon(recent_day)),
        "recent_plain": await message(pool, plain.tenant_id, noon(recent_day)),
        "fresh_short": await message(pool, short.tenant_id, now - timedelta(hours=1)),
        "placeholder": await message(pool, plain.tenant_id, noon(mid_day), placeholder=True),
    }
    # Timeline rows whose day has no partition land in the default partition: one far back (expired),
    # one ahead of the partitions made so far (moved into its day's partition when the job makes it).
    far_back, ahead = now - 300 * DAY, now + 12 * DAY
    stray_old, stray_ahead = uuid.uuid4(), uuid.uuid4()
    await pool.execute("INSERT INTO message_events (event_id, message_id, status, occurred_at) VALUES"
                       " ($1, $2, 'delivered', $3), ($4, $5, 'delivered', $6)",
                       stray_old, uuid.uuid4(), far_back, stray_ahead, m["fresh_short"], ahead)
    assert await pool.fetchval("SELECT tableoid::regclass::text FROM message_events WHERE event_id = $1",
                               stray_ahead) == "message_events_default"
    old_click, fresh_click, short_click = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for event_id, tenant, at in ((old_click, plain.tenant_id, now - 45 * DAY), (fresh_click, plain.tenant_id, now),
                                 (short_click, short.tenant_id, now - 20 * DAY)):
        await pool.execute(
            "INSERT INTO clicks (event_id, tenant_id, code, message_id, link_index, url, clicked_at, bot, user_agent)"
            " VALUES ($1, $2, 'c', $3, 0, 'https://example.com', $4, false, 'agent')", event_id, tenant, uuid.uuid4(), at)
    await set_retention(pool, short.tenant_id, messages=10, clicks=10)
    ref = f"gw-{uuid.uuid4().hex}"
    await pool.execute("INSERT INTO gateway_refs (gateway, gateway_message_id, message_id, submitted_at)"
                       " VALUES ('sim', $1, $2, $3)", ref, m["old_plain"], noon(old_day))
    before = RETENTION_ROWS.labels("reports", "messages")._value.get()

    settings = ReportsSettings(retention_messages_days=30, retention_clicks_days=30, retention_partitions_ahead_days=13,
                               retention_batch_rows=2)  # tiny batches: every deletion loops
    assert await run_job(pool, "reports", settings, reports_tasks(settings)) == "success"

    found = await present(pool, list(m.values()))
    gone = {k for k, v in m.items() if v not in found["messages"]}
    assert gone == {"old_plain", "old_long", "mid_plain", "recent_short", "placeholder"}
    # whole day 200 days back: its partition dropped (past the longest age any tenant keeps, 100 days)
    partitions = await day_partitions(pool, "message_events")
    assert old_partition not in partitions and mid_partition in partitions
    # day 50: kept for the tenant that keeps 100 days; the default tenant's timeline rows went with its message
    assert m["mid_long"] in found["message_events"] and m["mid_plain"] not in found["message_events"]
    assert m["recent_short"] not in found["message_events"] and m["recent_plain"] in found["message_events"]
    for table in ("webhook_outbox", "webhook_sequences"):
        assert found[table] == found["messages"], table
    # partitions made ahead; the stray row moved into its day's partition, the far one deleted
    for i in range(14):
        assert retention.partition_name("message_events", today + i * DAY) in partitions
    assert await pool.fetchval("SELECT tableoid::regclass::text FROM message_events WHERE event_id = $1",
                               stray_ahead) == retention.partition_name("message_events", ahead.date())
    assert await pool.fetchval("SELECT count(*) FROM message_events WHERE event_id = $1", stray_old) == 0
    clicks = {r["event_id"] for r in await pool.fetch(
        "SELECT event_id FROM clicks WHERE event_id = ANY($1::uuid[])", [old_click, fresh_click, short_click])}
    assert clicks == {fresh_click}
    assert await pool.fetchval("SELECT count(*) FROM gateway_refs WHERE gateway_message_id = $1", ref) == 0
    # what the run did: its row, the metrics
    run = await pool.fetchrow("SELECT last_success_at, last_counts, lease_until FROM retention_runs WHERE job = 'reports'")
    assert run["lease_until"] is None and run["last_counts"]["messages"] >= 5
    assert run["last_counts"]["message_events:dropped"] >= 1
    assert RETENTION_ROWS.labels("reports", "messages")._value.get() - before >= 5
    assert RETENTION_LAST_SUCCESS.labels("reports")._value.get() == run["last_success_at"].timestamp()
    # the timeline of a kept message still reads whole
    assert [e["status"] for e in (await fetch_message(pool, long_.tenant_id, m["mid_long"]))["timeline"]] == [
        "accepted", "delivered"]


async def test_a_second_instance_does_not_run_the_job_at_the_same_time(pool) -> None:
    settings = RetentionSettings(retention_interval_s=3600)
    ran: list[str] = []
    inside = 0

    async def slow(run: Run) -> None:
        nonlocal inside
        inside += 1
        assert inside == 1, "two instances inside the job at once"
        ran.append(run.now.isoformat())
        await asyncio.sleep(0.5)
        inside -= 1

    first, second = (RetentionJob(pool, "lease-test", settings, [slow], owner=f"instance-{i}") for i in (1, 2))
    outcomes = await asyncio.gather(first.run_once(), second.run_once())
    assert sorted(outcomes) == ["skipped", "success"] and len(ran) == 1
    # once per period: neither runs it again before the interval has passed
    assert (await first.run_once(), await second.run_once()) == ("skipped", "skipped")
    await pool.execute("UPDATE retention_runs SET last_success_at = now() - interval '61 minutes' WHERE job = 'lease-test'")
    assert await second.run_once() == "success" and len(ran) == 2
    # a lease left by an instance that died mid-run holds the job until it expires
    await pool.execute("UPDATE retention_runs SET last_success_at = now() - interval '2 hours',"
                       " owner = 'dead', lease_until = now() + interval '1 minute' WHERE job = 'lease-test'")
    assert await first.run_once() == "skipped"
    await pool.execute("UPDATE retention_runs SET lease_until = now() - interval '1 second' WHERE job = 'lease-test'")
    assert await first.run_once() == "success" and len(ran) == 3


async def test_a_failed_or_unfinished_run_is_not_a_success(pool) -> None:
    async def fails(run: Run) -> None:
        raise RuntimeError("boom")

    settings = RetentionSettings(retention_interval_s=3600)
    assert await RetentionJob(pool, "fail-test", settings, [fails]).run_once() == "failed"
    row = await pool.fetchrow("SELECT last_success_at, lease_until FROM retention_runs WHERE job = 'fail-test'")
    assert row["last_success_at"] is None and row["lease_until"] is None  # free for the next check
    # a run past its budget stops between batches, and the next one goes on
    tenant = await make_tenant(pool)
    old = utcnow() - 500 * DAY
    for _ in range(3):
        await pool.execute("INSERT INTO inbound_messages (event_id, tenant_id, phone_e164, recipient, body, received_at)"
                           " VALUES ($1, $2, '+34600000001', 'HERALD', 'hello', $3)", uuid.uuid4(), tenant.tenant_id, old)
    tight = IngestSettings(retention_batch_rows=1, retention_run_budget_s=0.000001)
    assert await run_job(pool, "ingest", tight, ingest_tasks(tight)) == "behind"
    assert await pool.fetchval("SELECT last_success_at FROM retention_runs WHERE job = 'ingest'") is None
    roomy = IngestSettings(retention_batch_rows=1)
    assert await run_job(pool, "ingest", roomy, ingest_tasks(roomy)) == "success"
    assert await pool.fetchval("SELECT count(*) FROM inbound_messages WHERE tenant_id = $1", tenant.tenant_id) == 0


async def test_ingest_expires_inbound_by_tenant_age_and_idempotency_keys_after_their_window(pool) -> None:
    plain, short = await make_tenant(pool), await make_tenant(pool)
    await set_retention(pool, short.tenant_id, inbound=7)
    now = utcnow()
    rows = {}
    for name, tenant, age in (("plain_old", plain, 45), ("plain_new", plain, 10), ("short_old", short, 10),
                              ("short_new", short, 1)):
        rows[name] = uuid.uuid4()
        await pool.execute("INSERT INTO inbound_messages (event_id, tenant_id, phone_e164, recipient, body, received_at)"
                           " VALUES ($1, $2, '+34600000001', 'HERALD', 'hello', $3)",
                           rows[name], tenant.tenant_id, now - age * DAY)
    for key, age in (("old-key", 31), ("new-key", 29)):
        await pool.execute("INSERT INTO idempotency_keys (tenant_id, idempotency_key, message_id, request_hash, created_at)"
                           " VALUES ($1, $2, $3, 'h', $4)", plain.tenant_id, key, uuid.uuid4(), now - age * DAY)
    settings = IngestSettings(retention_inbound_days=30, idempotency_window_days=30)
    assert await run_job(pool, "ingest", settings, ingest_tasks(settings)) == "success"
    kept = {r["event_id"] for r in await pool.fetch(
        "SELECT event_id FROM inbound_messages WHERE event_id = ANY($1::uuid[])", list(rows.values()))}
    assert kept == {rows["plain_new"], rows["short_new"]}
    keys = {r["idempotency_key"] for r in await pool.fetch(
        "SELECT idempotency_key FROM idempotency_keys WHERE tenant_id = $1", plain.tenant_id)}
    assert keys == {"new-key"}


async def test_ingest_removes_the_number_of_subject_access_exports_past_their_time(pool) -> None:
    """Without anyone asking for or reading an export again, the job removes an expired export's
    number (the row stays as the audit of who asked)."""
    tenant = await make_tenant(pool)
    now = utcnow()
    old, live = uuid.uuid4(), uuid.uuid4()
    for export_id, expires in ((old, now - DAY), (live, now + DAY)):
        await pool.execute(
            "INSERT INTO subject_access_exports (export_id, tenant_id, phone_e164, requested_by, requested_at, expires_at)"
            " VALUES ($1, $2, '+34600000077', 'k1', $3, $4)", export_id, tenant.tenant_id, now - 8 * DAY, expires)
    settings = IngestSettings()
    assert await run_job(pool, "ingest", settings, ingest_tasks(settings)) == "success"
    rows = {r["export_id"]: r for r in await pool.fetch(
        "SELECT export_id, phone_e164, removed_why FROM subject_access_exports WHERE tenant_id = $1", tenant.tenant_id)}
    assert (rows[old]["phone_e164"], rows[old]["removed_why"]) == (None, "expired")
    assert (rows[live]["phone_e164"], rows[live]["removed_why"]) == ("+34600000077", None)


@pytest.fixture(scope="module")
def simulator(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(env={}, ports=Ports.random(), log_dir=tmp_path_factory.mktemp("sim"))
    stack.start("simulator", extra_env={"HERALD_SIM_RECEIPT_URL": "http://127.0.0.1:9/none"})
    stack.wait_ready(30)
    yield stack
    stack.stop()


def _outbound(body: str, secret: bool) -> Incoming:
    message = MessageOutbound(message_id=uuid.uuid4(), to="+34600765432", country="ES", body=body, type="transactional",
                              encoding="GSM-7", segments=1, source="api", accepted_at=utcnow(), released_at=utcnow(),
                              secret=secret)
    return Incoming(None, MessageOutboundEvent(tenant="acme", payload=message), None)  # type: ignore[arg-type]


async def test_claims_lose_their_text_when_finished_a_secret_at_once(pool, simulator) -> None:
    gateway = HeraldHttpConfig(name="sim", url=simulator.url("simulator"), api_token=SecretStr("sim-token"), rate_per_s=5000)
    settings = DispatcherSettings(gateways=[gateway], instance_id="test", retention_body_grace_h=24,
                                  retention_claims_days=7)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings)
    code = f"Your code is {uuid.uuid4().int % 1_000_000:06d}"
    otp, plain = _outbound(code, True), _outbound("See you at 5", False)
    await handler([otp, plain])
    await gateways["sim"].close()
    otp_id, plain_id = otp.event.payload.message_id, plain.event.payload.message_id
    # the gateway got the code: it was sent, then redacted at once in the claim
    sent = httpx.get(f"http://127.0.0.1:{simulator.ports.simulator_control}/stats/submissions",
                     params={"client_ref": str(otp_id)}).json()["messages"]
    assert len(sent) == 1
    claims = {r["message_id"]: r for r in await pool.fetch(
        "SELECT message_id, state, outbound FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", [otp_id, plain_id])}
    assert claims[otp_id]["state"] == "submitted" and claims[otp_id]["outbound"]["body"] == ""
    assert claims[otp_id]["outbound"]["body_redacted"] is True and code not in json.dumps(claims[otp_id]["outbound"])
    assert claims[plain_id]["outbound"]["body"] == "See you at 5"  # within its grace
    # older finished claims: the text goes after the grace, the row after the claims' age; open claims stay
    old_open, old_done, very_old = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for mid, state, age in ((old_open, "claimed", timedelta(days=9)), (old_done, "failed", timedelta(hours=30)),
                            (very_old, "submitted", timedelta(days=8))):
        await pool.execute(
            "INSERT INTO dispatch_claims (message_id, tenant_id, state, owner, lease_until, outbound, updated_at)"
            " VALUES ($1, 'acme', $2, 'x', now() + interval '1 hour', $3::jsonb, now() - $4::interval)",
            mid, state, {"message_id": str(mid), "to": "+34600765432", "body": "old text"}, age)
    assert await run_job(pool, "dispatcher", settings, dispatcher_tasks(settings)) == "success"
    claims = {r["message_id"]: r for r in await pool.fetch(
        "SELECT message_id, outbound FROM dispatch_claims WHERE message_id = ANY($1::uuid[])",
        [otp_id, plain_id, old_open, old_done, very_old])}
    assert set(claims) == {otp_id, plain_id, old_open, old_done}
    assert claims[old_done]["outbound"]["body"] == "" and claims[old_done]["outbound"]["to"] == "+34600765432"
    assert claims[old_open]["outbound"]["body"] == "old text"
    assert claims[plain_id]["outbound"]["body"] == "See you at 5"


async def test_a_secret_text_never_reaches_reports_or_status_webhooks(pool) -> None:
    tenant = await make_tenant(pool)
    code = f"Your code is {uuid.uuid4().int % 1_000_000:06d}"
    mid, now = uuid.uuid4(), utcnow()
    accepted = MessageAccepted(message_id=mid, to="+34600123456", country="ES", body=code, type="transactional",
                               encoding="GSM-7", segments=1, source="api", accepted_at=now, secret=True,
                               status_callback_url="https://example.com/status")
    assert accepted.model_dump(mode="json")["secret"] is True
    changes = [
        from_accepted(uuid.uuid4(), tenant.tenant_id, accepted),
        from_status(uuid.uuid4(), tenant.tenant_id, now + timedelta(milliseconds=5), MessageStatusChanged(
            message_id=mid, status=Status.SUBMITTED, gateway="sim", gateway_message_id=mid.hex, attempts=1)),
        from_receipt(uuid.uuid4(), mid, tenant.tenant_id, now + timedelta(milliseconds=9), DeliveryReceipt(
            gateway="sim", gateway_message_id=mid.hex, status=ReceiptStatus.DELIVERED)),
    ]
    async with pool.acquire() as conn, conn.transaction():
        await record(ReportsRepository(conn), changes)
    digits = code.rsplit(" ", 1)[1]
    stored = [
        await pool.fetchval("SELECT row_to_json(m)::text FROM messages m WHERE message_id = $1", mid),
        await pool.fetchval("SELECT json_agg(e)::text FROM message_events e WHERE message_id = $1", mid),
        await pool.fetchval("SELECT json_agg(w)::text FROM webhook_outbox w WHERE message_id = $1", mid),
        json.dumps(await fetch_message(pool, tenant.tenant_id, mid), default=str),
    ]
    assert stored[2] is not None and '"delivered"' in stored[2]  # the webhooks are there...
    assert all(digits not in text for text in stored)  # ...and nowhere the code
    # the rows were for this check only: no webhook worker of a later test may try to post them
    await pool.execute("DELETE FROM webhook_outbox WHERE message_id = $1", mid)


async def test_migration_moves_an_existing_timeline_into_day_partitions(session_env: Env) -> None:
    db = f"herald_mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(session_env.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{db}"')
    await admin.close()
    conn = await asyncpg.connect(session_env.admin_dsn.rsplit("/", 1)[0] + f"/{db}")
    try:
        await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        for name, sql in migration_files():
            if name >= "0035":
                break
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
        then = datetime(2025, 3, 1, 10, tzinfo=UTC)
        events = [(uuid.uuid4(), uuid.uuid4(), then + i * timedelta(hours=20)) for i in range(5)]
        await conn.executemany("INSERT INTO message_events (event_id, message_id, status, occurred_at, detail)"
                               " VALUES ($1, $2, 'accepted', $3, '{\"k\": 1}')", events)
        assert "0035_message_events_partitioned.sql" in await migrate(conn)
        rows = await conn.fetch("SELECT event_id, tableoid::regclass::text AS part, detail FROM message_events")
        assert {r["event_id"] for r in rows} == {e[0] for e in events}
        assert {r["part"] for r in rows} == {retention.partition_name("message_events", e[2].date()) for e in events}
        assert await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname = 'message_events_unpartitioned'") == 0
        # idempotent writes still: the same event again is not a second row
        e = events[0]
        await conn.execute("INSERT INTO message_events (event_id, message_id, status, occurred_at) VALUES ($1, $2,"
                           " 'accepted', $3) ON CONFLICT (event_id, occurred_at) DO NOTHING", *e)
        assert await conn.fetchval("SELECT count(*) FROM message_events WHERE event_id = $1", e[0]) == 1
    finally:
        await conn.close()
        admin = await asyncpg.connect(session_env.admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


async def test_a_tenant_sets_and_clears_its_own_ages_through_the_admin_policy(pool) -> None:
    from herald_tools import admin

    tenant = await make_tenant(pool)
    async with pool.acquire() as conn:
        shown = await admin.tenant_policy_set(conn, "ops", tenant.tenant_id, retention={"messages": 90, "inbound": 30})
        assert shown["retention"] == {"messages": 90, "inbound": 30}
        shown = await admin.tenant_policy_set(conn, "ops", tenant.tenant_id,
                                              retention=retention.parse_retention_option(["inbound=default", "clicks=7"]))
        assert shown["retention"] == {"messages": 90, "clicks": 7}
        for bad in ({"messages": 0}, {"history": 30}):
            with pytest.raises(ValueError):
                await admin.tenant_policy_set(conn, "ops", tenant.tenant_id, retention=bad)
        assert (await admin.tenant_policy(conn, tenant.tenant_id))["retention"] == {"messages": 90, "clicks": 7}
        audited = await conn.fetchval("SELECT count(*) FROM audit_log WHERE target = $1 AND action = 'tenant.policy'"
                                      " AND detail ? 'retention'", tenant.tenant_id)
    assert audited == 2
