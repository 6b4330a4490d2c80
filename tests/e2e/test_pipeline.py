"""Messages through all four services and the simulator, on the real broker and database."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter

import httpx
import pytest

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from shared.contracts import MessageRequest, TriggerEvent
from shared.statuses import FINAL
from shared.topics import REJECTED, TRIGGERS
from tests.conftest import Tenant, make_tenant
from tests.helpers import produce_raw, read_topic, rejected_events, signed, wait_for

pytestmark = pytest.mark.e2e
FINAL_NAMES = [s.value for s in FINAL]


async def send_batches(stack: Stack, tenant: Tenant, messages: list[dict], size: int = 500) -> list[str]:
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=60) as client:
        for i in range(0, len(messages), size):
            r = await client.post("/v1/messages/batch", json={"messages": messages[i : i + size]})
            assert r.status_code == 202, r.text
            ids += [x["message_id"] for x in r.json()["results"] if x.get("message_id")]
    return ids


async def all_final(pool, ids: list[str], timeout_s: float = 120) -> dict[str, str]:
    async def check():
        rows = await pool.fetch(
            "SELECT message_id::text AS id, status FROM messages WHERE message_id = ANY($1::uuid[])", ids
        )
        statuses = {r["id"]: r["status"] for r in rows}
        return statuses if len(statuses) == len(ids) and all(s in FINAL_NAMES for s in statuses.values()) else None

    return await wait_for(check, timeout_s=timeout_s, interval_s=0.5)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    samples: dict[tuple[str, frozenset], float] = {}
    for line in httpx.get(url).text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


async def test_thousand_messages_each_reach_exactly_one_final_state(stack: Stack, pool) -> None:
    tenant = await make_tenant(pool)
    before = final_counts(stack)
    numbers = demo_numbers(1200, seed=99, countries=marketing_countries(True))
    suppressed = set(numbers[::40])
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers) as client:
        for number in suppressed:
            assert (await client.put(f"/v1/suppressions/{number}")).status_code == 200
    messages = [
        {"to": n, "body": f"Message {i}: hello from Herald", "type": "marketing" if i % 2 == 0 else "transactional"}
        for i, n in enumerate(numbers)
    ]
    ids = await send_batches(stack, tenant, messages)
    assert len(ids) == 1200
    statuses = await all_final(pool, ids)
    counts = Counter(statuses.values())
    expected_suppressed = sum(1 for i, n in enumerate(numbers) if n in suppressed and i % 2 == 0)
    assert counts["suppressed"] == expected_suppressed
    assert counts["delivered"] > 0 and counts["delivered"] + counts["undelivered"] + counts["failed"] == 1200 - expected_suppressed

    # Exactly one final event per message in the timeline.
    rows = await pool.fetch(
        "SELECT message_id::text AS id, count(*) AS n FROM message_events"
        " WHERE message_id = ANY($1::uuid[]) AND status = ANY($2::text[]) GROUP BY message_id",
        ids, FINAL_NAMES,
    )
    assert len(rows) == 1200 and all(r["n"] == 1 for r in rows)

    # The simulator saw every sent message exactly once, and no suppressed one.
    refs = httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs").json()["client_refs"]
    sent = {i for i, s in statuses.items() if s != "suppressed"}
    assert {i: refs.get(i) for i in sent} == {i: 1 for i in sent}
    assert not [i for i, s in statuses.items() if s == "suppressed" and i in refs]
    assert httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats").json()["duplicates"] == {}

    # reports' metrics agree with PostgreSQL: the counters grew by exactly this test's final statuses.
    async def settled():
        # This test's messages only: the database is shared with other modules' stacks, whose
        # held or unknown messages may stay below the final rank.
        return await pool.fetchval(
            "SELECT count(*) = 0 FROM messages WHERE message_id = ANY($1::uuid[]) AND status_rank < 100", ids)

    await wait_for(settled, timeout_s=60)
    await asyncio.sleep(0.5)
    db = Counter(statuses.values())
    assert final_counts(stack) - before == db


def final_counts(stack: Stack) -> Counter:
    metric: Counter = Counter()
    for (name, labels), value in scrape(f"{stack.ops_url('reports')}/metrics").items():
        if name == "herald_messages_final_total":
            metric[dict(labels)["status"]] += int(value)
    return metric


async def test_message_view_is_scoped_to_its_tenant(stack: Stack, pool) -> None:
    owner, other = await make_tenant(pool), await make_tenant(pool)
    ids = await send_batches(stack, owner, [{"to": "+34600000123", "body": "hello"}])
    await all_final(pool, ids)
    async with httpx.AsyncClient(base_url=stack.url("reports")) as client:
        r = await client.get(f"/v1/messages/{ids[0]}", headers=owner.headers)
        assert r.status_code == 200
        view = r.json()
        assert view["to_e164"] == "+34600000123" and view["status"] in FINAL_NAMES
        assert [e["status"] for e in view["timeline"]][:2] == ["accepted", "submitted"]
        assert view["accepted_at"] and view["submitted_at"] and view["final_at"]
        r = await client.get(f"/v1/messages/{ids[0]}", headers=other.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "message_not_found")
        r = await client.get("/v1/messages/not-a-uuid", headers=owner.headers)
        assert r.status_code == 422
        r = await client.get(f"/v1/messages/{ids[0]}")
        assert r.status_code == 401


async def test_find_and_export_a_tenants_messages(stack: Stack, pool) -> None:
    """GET /v1/messages (filters, cursor pages) and /v1/messages/export (NDJSON, CSV) on reports,
    for messages sent through ingest: only the caller's tenant's, newest first, each once."""
    import csv
    import io
    import json

    owner, other = await make_tenant(pool), await make_tenant(pool)
    sent = [{"to": f"+3460055{i:04d}", "body": f"order {i} shipped", "metadata": {"order": str(i), "shop": "web"}}
            for i in range(7)]
    ids = await send_batches(stack, owner, sent)
    await send_batches(stack, other, [{"to": "+34600550000", "body": "not yours", "metadata": {"order": "0"}}])
    await all_final(pool, ids)
    async with httpx.AsyncClient(base_url=stack.url("reports"), headers=owner.headers, timeout=30) as client:
        async def listed(**params) -> list[dict]:
            out, cursor = [], None
            while True:
                r = await client.get("/v1/messages", params={**params, **({"cursor": cursor} if cursor else {})})
                assert r.status_code == 200, r.text
                out += r.json()["messages"]
                cursor = r.json()["next_cursor"]
                if cursor is None:
                    return out

        paged = await listed(limit=3)
        assert sorted(m["message_id"] for m in paged) == sorted(ids), "every message once, none of the other tenant"
        assert [(m["accepted_at"], m["message_id"]) for m in paged] == sorted(
            ((m["accepted_at"], m["message_id"]) for m in paged), reverse=True)
        assert [m["message_id"] for m in await listed(to="+34600550003")] == [ids[3]]
        assert [m["message_id"] for m in await listed(metadata=["order=5", "shop=web"])] == [ids[5]]
        assert await listed(metadata="shop=app") == []
        statuses = {m["status"] for m in paged}
        assert {m["message_id"] for m in await listed(status=sorted(statuses))} == set(ids)
        r = await client.get("/v1/messages", params={"status": "bogus"})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "unknown_status_filter")
        r = await client.get("/v1/messages", params={"cursor": "forged"})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_cursor")
        r = await client.get("/v1/messages/export", params={"format": "ndjson", "metadata": "shop=web"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        assert sorted(json.loads(line)["message_id"] for line in r.text.splitlines()) == sorted(ids)
        r = await client.get("/v1/messages/export", params={"format": "csv", "to": "+34600550001"})
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [(x["message_id"], json.loads(x["metadata"])["order"]) for x in rows] == [(ids[1], "1")]
        r = await client.get("/v1/messages", headers={"Authorization": ""})
        assert r.status_code == 401


async def test_a_test_key_runs_the_pipeline_but_never_reaches_a_carrier(stack: Stack, pool) -> None:
    """Messages sent with a test key go through ingest, scheduler, dispatcher and reports, end in
    the status their number asks for, and the gateway never sees them; the same tenant's live key
    still reaches it."""
    from shared.auth import create_key

    tenant = await make_tenant(pool)
    async with pool.acquire() as conn:
        test_key = await create_key(conn, tenant.tenant_id, ("messages:write", "messages:read"), test=True)
    test = Tenant(tenant.tenant_id, test_key)
    numbers = {"+34600770123": "delivered", "+34600770001": "undelivered", "+34600770002": "failed",
               "+34600770003": "failed"}
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=test.headers, timeout=30) as client:
        r = await client.post("/v1/messages", json={"to": "+34600770123", "body": "Your code is 111111"})
        assert r.status_code == 202 and r.json()["sandbox"] is True
        single = r.json()["message_id"]
    ids = [single] + await send_batches(stack, test, [{"to": n, "body": "sandbox"} for n in list(numbers)[1:]])
    live = await send_batches(stack, tenant, [{"to": "+34600770123", "body": "live"}])
    final = await all_final(pool, ids + live)
    assert [final[i] for i in ids] == list(numbers.values())
    rows = {str(r["message_id"]): r for r in await pool.fetch(
        "SELECT message_id, gateway, reason_code FROM messages WHERE message_id = ANY($1::uuid[])", ids + live)}
    assert {rows[i]["gateway"] for i in ids[:3]} == {"sandbox"} and rows[ids[3]]["reason_code"] == "sandbox_refused"
    refs = httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]
    assert not any(refs.get(i) for i in ids), "a test key's message reached the gateway"
    assert refs.get(live[0]) == 1 and rows[live[0]]["gateway"] != "sandbox"


async def test_trigger_topic(stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    marker = uuid.uuid4().hex[:10]

    def trigger(to: str, tenant_id: str = tenant.tenant_id) -> bytes:
        request = MessageRequest(to=to, body="Your order has shipped", metadata={"marker": marker})
        return TriggerEvent(tenant=tenant_id, payload=request).model_dump_json().encode()

    good = [trigger(f"+3461234{i:04d}") for i in range(20)]
    other = await make_tenant(pool)
    records = await signed(pool, tenant.tenant_id, [
        *[(marker.encode(), g) for g in good[:10]],
        (marker.encode(), trigger("+34123")),  # impossible number
        (marker.encode(), trigger("+34600000001", other.tenant_id)),  # this tenant's key speaking for another
        (marker.encode(), b'{"type": "message.requested"'),  # broken JSON
        *[(marker.encode(), g) for g in good[10:]],
        (marker.encode(), good[0]),  # the same event again: must not send twice
    ])
    forged = trigger("+34600000002")
    records += [
        (marker.encode(), trigger("+34600000003")),  # unsigned
        (marker.encode(), forged, [("herald-key", records[0][2][0][1]), ("herald-signature", b"v1=" + b"0" * 64)]),
        (marker.encode(), trigger("+34600000004"), [("herald-key", b"kk_nosuchkey"), ("herald-signature", b"v1=00")]),
    ]
    await produce_raw(env.bootstrap, TRIGGERS.name(env.prefix), records)

    async def twenty():
        rows = await pool.fetch(
            "SELECT message_id::text AS id FROM messages WHERE tenant_id = $1 AND metadata->>'marker' = $2",
            tenant.tenant_id, marker,
        )
        return [r["id"] for r in rows] if len(rows) >= 20 else None

    ids = await wait_for(twenty, timeout_s=60)
    assert len(ids) == 20
    await all_final(pool, ids)
    rejected = await read_topic(
        env.bootstrap, REJECTED.name(env.prefix),
        lambda rs: len([e for e in rejected_events(rs) if e.payload.key == marker]) >= 6,
    )
    reasons = sorted(e.payload.reason_code for e in rejected_events(rejected) if e.payload.key == marker)
    assert reasons == ["bad_signature", "impossible_number", "malformed_json", "tenant_mismatch", "unknown_signing_key",
                       "unsigned_event"]
    assert not await pool.fetchval("SELECT count(*) FROM messages WHERE tenant_id = $1", other.tenant_id)


async def test_gateway_outage_is_retried_and_permanent_errors_fail(stack: Stack, pool) -> None:
    control = f"http://127.0.0.1:{stack.ports.simulator_control}/control"
    tenant = await make_tenant(pool)
    httpx.post(control, json={"mode": "fail", "status": 503}).raise_for_status()
    try:
        ids = await send_batches(stack, tenant, [{"to": f"+3462000{i:04d}", "body": "retry me"} for i in range(10)])
        await asyncio.sleep(2.5)
    finally:
        httpx.post(control, json={"mode": "normal"}).raise_for_status()
    await all_final(pool, ids, timeout_s=90)
    reasons = [r["reason_code"] for r in await pool.fetch("SELECT reason_code FROM messages WHERE message_id = ANY($1::uuid[])", ids)]
    assert "retries_exhausted" not in reasons
    attempts = await pool.fetch(
        "SELECT (detail->>'attempts')::int AS a FROM message_events WHERE message_id = ANY($1::uuid[]) AND status = 'submitted'",
        ids,
    )
    # Every message was submitted in the end; the ones the dispatcher met during the outage
    # were retried (later ones may have waited in Kafka meanwhile and gone through at once).
    assert len(attempts) == 10 and any(r["a"] > 1 for r in attempts)

    httpx.post(control, json={"mode": "fail", "status": 400}).raise_for_status()
    try:
        ids = await send_batches(stack, tenant, [{"to": "+34620009999", "body": "refused"}])
        await all_final(pool, ids, timeout_s=60)
    finally:
        httpx.post(control, json={"mode": "normal"}).raise_for_status()
    row = await pool.fetchrow("SELECT status, reason_code FROM messages WHERE message_id = $1::uuid", ids[0])
    assert row["status"] == "failed" and row["reason_code"] not in (None, "retries_exhausted")


async def test_scheduled_send_survives_a_scheduler_crash_and_quiet_hours_hold(stack: Stack, pool) -> None:
    from datetime import UTC, datetime, timedelta

    from herald_tools.demo import marketing_countries

    tenant = await make_tenant(pool)
    send_at = datetime.now(UTC) + timedelta(seconds=6)
    quiet = marketing_countries(False)
    messages = [{"to": "+34611000001", "body": "Your appointment is tomorrow at 10:00", "send_at": send_at.isoformat()}]
    if quiet:
        messages.append({"to": demo_numbers(1, seed=3, countries=quiet[:1])[0], "body": "Offer!", "type": "marketing"})
    ids = await send_batches(stack, tenant, messages)

    async def held():
        return await pool.fetchval("SELECT count(*) FROM scheduled_messages WHERE message_id = ANY($1::uuid[])", ids) == len(ids) or None

    await wait_for(held, timeout_s=30)
    await asyncio.to_thread(stack.restart, stack.find("scheduler"), hard=True)  # kill -9 while they wait
    statuses = await all_final(pool, ids[:1], timeout_s=60)
    row = await pool.fetchrow("SELECT submitted_at FROM messages WHERE message_id = $1::uuid", ids[0])
    assert statuses[ids[0]] in FINAL_NAMES
    events = await pool.fetch("SELECT status, occurred_at, recorded_at FROM message_events WHERE message_id = $1::uuid ORDER BY occurred_at", ids[0])
    assert send_at <= row["submitted_at"] < send_at + timedelta(seconds=3), f"late after the restart: {send_at} {[dict(e) for e in events]}"
    timeline = [r["status"] for r in await pool.fetch(
        "SELECT status FROM message_events WHERE message_id = $1::uuid ORDER BY occurred_at", ids[0])]
    assert timeline[:3] == ["accepted", "scheduled", "submitted"]
    if quiet:
        row = await pool.fetchrow("SELECT status FROM messages WHERE message_id = $1::uuid", ids[1])
        assert row["status"] == "scheduled"
        detail = await pool.fetchval(
            "SELECT detail FROM message_events WHERE message_id = $1::uuid AND status = 'scheduled'", ids[1])
        assert detail["quiet_hours"] == "deferred" and detail["quiet_hours_rule"] and detail["due_at"]
        assert await pool.fetchval("SELECT due_at > now() FROM scheduled_messages WHERE message_id = $1::uuid", ids[1])
        await pool.execute("DELETE FROM scheduled_messages WHERE message_id = $1::uuid", ids[1])  # leave nothing pending
        await pool.execute("UPDATE messages SET status = 'expired', status_rank = 100 WHERE message_id = $1::uuid", ids[1])
