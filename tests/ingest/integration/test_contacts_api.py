"""The audience API (contacts, import, consent, segments, templates) on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI

from services.ingest import deps
from services.ingest.audience import importer
from services.ingest.audience.contacts_api import router as audience_router
from services.ingest.audience.contacts_repo import AudienceRepository
from services.ingest.audience.segments import parse
from services.ingest.settings import IngestSettings
from services.scheduler.domain import Facts, consent_policy, suppression_policy
from services.scheduler.handlers import FactsRepository
from shared.api import install_error_handlers
from shared.contracts import utcnow
from shared.erasure import NO_KEYS, ErasureKeys, build_keys
from shared.kafka import Publisher, make_producer
from tests.conftest import Tenant, make_tenant, register_senders
from tests.helpers import marketing_to

pytestmark = pytest.mark.integration


ERASURE_KEYS = {"k1": "contacts-test-erasure-key-0123456789abcdef"}
KEYS = build_keys(ERASURE_KEYS, None)  # what the app below hashes erased numbers with


@pytest.fixture(scope="module")
async def client(env, pool) -> AsyncIterator[httpx.AsyncClient]:
    settings = IngestSettings(erasure_keys=ERASURE_KEYS)
    producer = make_producer(settings, "test-contacts")
    await producer.start()
    app = FastAPI()
    deps.install(app, settings, pool, Publisher(producer, env.prefix, "ingest"))  # erasures go to herald.erasures.v1
    install_error_handlers(app)
    app.include_router(audience_router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest", timeout=120) as c:
        yield c
    await producer.stop()


def phone(i: int) -> str:
    return f"+346{i:08d}"


async def create(client: httpx.AsyncClient, tenant: Tenant, **fields) -> dict:
    r = await client.post("/v1/contacts", json=fields, headers=tenant.headers)
    assert r.status_code == 201, r.text
    return r.json()


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


# contacts -------------------------------------------------------------------------------------


async def test_create_get_update_contact(client, tenant: Tenant) -> None:
    c = await create(
        client, tenant, phone="+34 600 000 001", first_name=" Ana ", attributes={"plan": "pro", "seats": 3, "since": "2024-02-01T10:00:00+02:00"},
        tags=["vip", "vip", "newsletter"], language="ES", time_zone="Europe/Madrid", last_activity_at="2025-01-02T03:04:05Z",
    )
    assert (c["phone"], c["first_name"], c["country"], c["language"], c["tags"]) == ("+34600000001", "Ana", "ES", "es", ["vip", "newsletter"])
    assert c["attributes"] == {"plan": "pro", "seats": 3, "since": "2024-02-01T08:00:00+00:00"}  # dates normalised to UTC
    assert c["consent"]["marketing"] is None
    got = (await client.get(f"/v1/contacts/{c['contact_id']}", headers=tenant.headers)).json()
    assert got == c

    r = await client.patch(
        f"/v1/contacts/{c['contact_id']}",
        json={"attributes": {"plan": None, "score": 9.5}, "tags": ["a"], "last_name": "Ruiz", "first_name": None},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    u = r.json()
    assert u["attributes"] == {"seats": 3, "since": "2024-02-01T08:00:00+00:00", "score": 9.5}
    assert (u["tags"], u["last_name"], u["first_name"], u["language"]) == (["a"], "Ruiz", None, "es")
    assert u["updated_at"] > c["updated_at"]

    # a new number brings its country; an explicit country wins; null goes back to the number's
    u = (await client.patch(f"/v1/contacts/{c['contact_id']}", json={"phone": "+33612345678"}, headers=tenant.headers)).json()
    assert (u["phone"], u["country"]) == ("+33612345678", "FR")
    u = (await client.patch(f"/v1/contacts/{c['contact_id']}", json={"country": "be"}, headers=tenant.headers)).json()
    assert u["country"] == "BE"
    u = (await client.patch(f"/v1/contacts/{c['contact_id']}", json={"country": None}, headers=tenant.headers)).json()
    assert u["country"] == "FR"

    r = await client.post("/v1/contacts", json={"phone": "+33612345678"}, headers=tenant.headers)
    assert error(r) == (409, "contact_exists")
    assert r.json()["error"]["details"][0]["contact_id"] == c["contact_id"]
    other = await create(client, tenant, phone=phone(2))
    r = await client.patch(f"/v1/contacts/{other['contact_id']}", json={"phone": "+33612345678"}, headers=tenant.headers)
    assert error(r) == (409, "contact_exists")


@pytest.mark.parametrize(
    ("body", "code", "loc"),
    [
        ({"phone": "600000001"}, "not_e164", "body.phone"),
        ({"phone": "+34123"}, "impossible_number", "body.phone"),
        ({"phone": "+34910000000"}, "unsupported_number_type", "body.phone"),
        ({"phone": phone(1), "time_zone": "Mars/Olympus"}, "invalid_time_zone", "body.time_zone"),
        ({"phone": phone(1), "time_zone": "../../etc/passwd"}, "invalid_time_zone", "body.time_zone"),
        ({"phone": phone(1), "language": "spanish"}, "invalid_language", "body.language"),
        ({"phone": phone(1), "country": "XX"}, "invalid_country", "body.country"),
        ({"phone": phone(1), "attributes": {"bad key": 1}}, "invalid_key", "body.attributes.bad key"),
        ({"phone": phone(1), "attributes": {"d": "2024-02-30"}}, "invalid_date", "body.attributes.d"),
        ({"phone": phone(1), "attributes": {"n": 1e20}}, "number_out_of_range", "body.attributes.n"),
        ({"phone": phone(1), "tags": ["a,b"]}, "invalid_tag", "body.tags"),
        ({"phone": phone(1), "first_name": "x" * 101}, "too_long", "body.first_name"),
        ({"phone": phone(1), "last_activity_at": "yesterday"}, "invalid_date", "body.last_activity_at"),
        ({"phone": phone(1), "attributes": {"nested": {"a": 1}}}, "validation_failed", "body.attributes.nested.str"),
        ({"phone": phone(1), "colour": "red"}, "validation_failed", "body.colour"),
    ],
)
async def test_contact_validation(client, tenant: Tenant, body, code, loc) -> None:
    r = await client.post("/v1/contacts", json=body, headers=tenant.headers)
    assert error(r) == (422, code), r.text
    assert r.json()["error"]["details"][0]["loc"] == loc


async def test_several_errors_at_once(client, tenant: Tenant) -> None:
    r = await client.post("/v1/contacts", json={"phone": "nope", "language": "??", "time_zone": "x"}, headers=tenant.headers)
    assert error(r) == (422, "validation_failed")
    assert {d["code"] for d in r.json()["error"]["details"]} == {"not_e164", "invalid_language", "invalid_time_zone"}


async def test_tenant_isolation_and_scopes(client, pool, tenant: Tenant) -> None:
    c = await create(client, tenant, phone=phone(1))
    other = await make_tenant(pool)
    cid = c["contact_id"]
    for method, url, body in [
        ("GET", f"/v1/contacts/{cid}", None),
        ("PATCH", f"/v1/contacts/{cid}", {"first_name": "x"}),
        ("DELETE", f"/v1/contacts/{cid}", None),
        ("GET", f"/v1/contacts/{cid}/consents", None),
        ("POST", f"/v1/contacts/{cid}/consents", {"purpose": "marketing", "granted": False, "source": "api"}),
        ("GET", "/v1/contacts/not-a-uuid", None),
    ]:
        r = await client.request(method, url, json=body, headers=other.headers)
        assert error(r) == (404, "contact_not_found"), (method, url, r.text)
    assert (await client.get("/v1/contacts", headers=other.headers)).json()["contacts"] == []
    # the other tenant has its own contact with the same number
    await create(client, other, phone=phone(1))
    assert (await client.get(f"/v1/contacts/{cid}", headers=tenant.headers)).status_code == 200

    messages_only = await make_tenant(pool, scopes=("messages:write",))
    r = await client.get("/v1/contacts", headers=messages_only.headers)
    assert error(r) == (403, "insufficient_scope")
    reader = await make_tenant(pool, scopes=("contacts:read",))
    assert (await client.get("/v1/contacts", headers=reader.headers)).status_code == 200
    r = await client.post("/v1/contacts", json={"phone": phone(1)}, headers=reader.headers)
    assert error(r) == (403, "insufficient_scope")
    assert error(await client.get("/v1/contacts")) == (401, "missing_api_key")


async def test_keyset_paging(client, tenant: Tenant) -> None:
    made = {(await create(client, tenant, phone=phone(100 + i)))["contact_id"] for i in range(25)}
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        body = (await client.get("/v1/contacts", params=params, headers=tenant.headers)).json()
        seen += [c["contact_id"] for c in body["contacts"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 25 and set(seen) == made and seen == sorted(seen)
    one = (await client.get("/v1/contacts", params={"phone": phone(105)}, headers=tenant.headers)).json()["contacts"]
    assert [c["phone"] for c in one] == [phone(105)]
    r = await client.get("/v1/contacts", params={"cursor": "!!"}, headers=tenant.headers)
    assert error(r) == (422, "invalid_cursor")


# import ---------------------------------------------------------------------------------------


async def test_import_csv_with_bad_rows(client, pool, tenant: Tenant) -> None:
    await create(client, tenant, phone=phone(3), first_name="Old", last_name="Keep", tags=["old"])
    csv_text = (
        "\ufeffphone;first_name;last_name;tags;language;time_zone;attributes.plan;attributes.age:number;attributes.vip:bool;attributes.since:date;attributes.note\n"
        f"{phone(1)};Ana;\"García; \"\"la jefa\"\"\";vip|newsletter;es;Europe/Madrid;pro;34;yes;2024-01-31;\"two\nlines\"\n"
        "+34123;Bad;;;;;;;;;\n"  # row 2: impossible number
        f"{phone(2)};Luis;;;xx-not-a-language;Mars/Base;;not-a-number;maybe;2024-13-01;\n"  # row 3: five bad fields
        f"{phone(3)};;;new;;;team;;;;\n"  # row 4: updates; empty cells leave first and last name as they were
        f"{phone(4)};too;few\n"  # row 5: wrong column count
        "\n"
        f"{phone(1)};Ana María;;;;;;35;;;\n"  # row 6: the same phone again: a second update
    )
    r = await client.post("/v1/contacts/import", content=csv_text.encode(), headers={**tenant.headers, "content-type": "text/csv"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["format"], body["rows"], body["created"], body["updated"], body["rejected"]) == (
        "completed", "csv", 6, 1, 2, 3
    )
    errors = {(e["row"], e["field"], e["code"]) for e in body["errors"]}
    assert errors == {
        (2, "phone", "impossible_number"),
        (3, "language", "invalid_language"),
        (3, "time_zone", "invalid_time_zone"),
        (3, "attributes.age", "invalid_number"),
        (3, "attributes.vip", "invalid_bool"),
        (3, "attributes.since", "invalid_date"),
        (5, "", "wrong_column_count"),
    }
    repo = AudienceRepository(pool)
    ana = (await repo.list_contacts(tenant.tenant_id, after=None, limit=10, phone=phone(1)))[0]
    assert ana["first_name"] == "Ana María"
    assert ana["last_name"] == 'García; "la jefa"'
    assert ana["tags"] == ["vip", "newsletter"]
    assert ana["attributes"] == {"plan": "pro", "age": 35, "vip": True, "since": "2024-01-31", "note": "two\nlines"}
    old = (await repo.list_contacts(tenant.tenant_id, after=None, limit=10, phone=phone(3)))[0]
    assert (old["first_name"], old["last_name"], old["tags"], old["attributes"]) == ("Old", "Keep", ["new"], {"plan": "team"})


async def test_import_ndjson_and_json_array(client, pool, tenant: Tenant) -> None:
    lines = [
        json.dumps({"phone": phone(1), "first_name": "A", "attributes": {"n": 1}, "tags": ["x"]}),
        "{not json",
        json.dumps([1, 2]),
        "",
        json.dumps({"phone": phone(2), "unknown": 1}),
        json.dumps({"phone": phone(3), "last_activity_at": "2025-03-01"}),
    ]
    r = await client.post(
        "/v1/contacts/import", content="\n".join(lines).encode(), headers={**tenant.headers, "content-type": "application/x-ndjson"}
    )
    body = r.json()
    assert (body["format"], body["created"], body["rejected"]) == ("ndjson", 2, 3), body
    assert {(e["row"], e["code"]) for e in body["errors"]} == {(2, "malformed_json"), (3, "not_an_object"), (5, "unknown_field")}

    array = [{"phone": phone(1), "first_name": None, "attributes": {"n": None, "m": True}}, {"phone": "x"}, {"phone": phone(4)}]
    r = await client.post("/v1/contacts/import", json=array, headers=tenant.headers)
    body = r.json()
    assert (body["format"], body["created"], body["updated"], body["rejected"]) == ("json", 1, 1, 1), body
    a = (await AudienceRepository(pool).list_contacts(tenant.tenant_id, after=None, limit=1, phone=phone(1)))[0]
    assert (a["first_name"], a["attributes"], a["tags"]) == (None, {"m": True}, ["x"])  # null clears; attributes merge


async def test_import_stops_on_unreadable_bodies(client, pool, tenant: Tenant) -> None:
    h = {**tenant.headers, "content-type": "text/csv"}
    r = await client.post("/v1/contacts/import", content=b"phone,email\n+34600000001,a@b.c\n", headers=h)
    assert error(r) == (422, "unknown_column")
    r = await client.post("/v1/contacts/import", content=b"first_name\nAna\n", headers=h)
    assert error(r) == (422, "missing_phone_column")
    r = await client.post("/v1/contacts/import", content=b"phone\n", headers={**tenant.headers, "content-type": "text/plain"})
    assert error(r) == (415, "unsupported_media_type")
    r = await client.post("/v1/contacts/import", content=f"phone\n{phone(1)}\n\"unclosed\n".encode(), headers=h)
    assert error(r) == (422, "unclosed_quote")
    assert r.json()["import"]["created"] == 1  # the rows before the problem are in
    good = ",".join(json.dumps({"phone": phone(10 + i)}) for i in range(3))
    r = await client.post("/v1/contacts/import", content=f"[{good}, {{broken".encode(), headers={**tenant.headers, "content-type": "application/json"})
    assert error(r) == (422, "malformed_json")
    assert r.json()["import"]["created"] == 3
    r = await client.post("/v1/contacts/import", content=b"phone\n\xff\xfe\n", headers=h)
    assert error(r) == (422, "invalid_encoding")


async def test_import_100k_rows_streamed(client, pool, tenant: Tenant) -> None:
    """100,000 rows in one upload: the server imports while the body is still arriving."""
    rows = 100_000
    progress: dict[str, int] = {}
    repo = AudienceRepository(pool)
    languages = ["es", "en", "fr", "de", "pt", "it"]

    async def body() -> AsyncIterator[bytes]:
        yield b"phone,first_name,language,tags,attributes.score:number,attributes.plan\n"
        chunk: list[str] = []
        for i in range(rows):
            chunk.append(f"{phone(i)},Name{i},{languages[i % 6]},{'vip' if i % 10 == 0 else ''},{i % 100},{'pro' if i % 3 == 0 else 'free'}\n")
            if len(chunk) == 500:
                yield "".join(chunk).encode()
                chunk = []
            if i == rows // 2:  # halfway through the upload, rows are already in PostgreSQL
                progress["in_db_at_half"] = await pool.fetchval("SELECT count(*) FROM contacts WHERE tenant_id = $1", tenant.tenant_id)
        yield "".join(chunk).encode()

    started = time.perf_counter()
    r = await client.post("/v1/contacts/import", content=body(), headers={**tenant.headers, "content-type": "text/csv"})
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text[:500]
    result = r.json()
    assert (result["rows"], result["created"], result["rejected"]) == (rows, rows, 0)
    assert progress["in_db_at_half"] >= 40_000, progress  # streamed: no waiting for the whole body
    print(f"\nimported {rows} rows in {elapsed:.1f} s: {rows / elapsed:,.0f} rows/s")
    count, _ = await repo.preview(tenant.tenant_id, parse('"vip" in tags and plan = "pro" and score >= 50'))
    expected = sum(1 for i in range(rows) if i % 10 == 0 and i % 3 == 0 and i % 100 >= 50)
    assert count == expected


async def test_concurrent_imports_of_the_same_numbers(client, pool, tenant: Tenant) -> None:
    """Two uploads upserting the same 3,000 numbers in opposite orders: both finish, each number once."""
    numbers = [phone(i) for i in range(3000)]
    forward = "phone,first_name\n" + "".join(f"{n},A\n" for n in numbers)
    backward = "phone,first_name\n" + "".join(f"{n},B\n" for n in reversed(numbers))
    h = {**tenant.headers, "content-type": "text/csv"}
    first, second = await asyncio.gather(
        client.post("/v1/contacts/import", content=forward.encode(), headers=h),
        client.post("/v1/contacts/import", content=backward.encode(), headers=h),
    )
    assert first.status_code == second.status_code == 200, (first.text[:300], second.text[:300])
    a, b = first.json(), second.json()
    assert a["created"] + b["created"] == 3000 and a["updated"] + b["updated"] == 3000
    assert await pool.fetchval("SELECT count(*) FROM contacts WHERE tenant_id = $1", tenant.tenant_id) == 3000


async def test_importer_reads_in_chunks_and_keeps_one_batch_in_flight(pool, env) -> None:
    """The importer pulls the body chunk by chunk and never holds more than two batches."""
    written: list[int] = []
    pulled = 0
    in_flight_max = 0
    active = 0

    async def upsert(batch):
        nonlocal active, in_flight_max
        active += 1
        in_flight_max = max(in_flight_max, active)
        written.append(len(batch))
        active -= 1
        return len(batch), 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b"phone\n"
        for start in range(0, 20_000, 1000):
            pulled += 1
            # when chunk n is asked for, all but the last couple of batches before it are written
            assert sum(written) >= start - 2 * 1000
            yield "".join(f"{phone(i)}\n" for i in range(start, start + 1000)).encode()

    result = await importer.run_import(chunks(), "csv", upsert, allowed_types=None, batch_size=1000)
    assert (result.rows, result.created, result.chunks, result.batches) == (20_000, 20_000, 21, 20)
    assert max(written) == 1000 and in_flight_max == 1


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json"])
async def test_parsers_survive_any_chunk_boundary(fmt) -> None:
    """Every way of cutting the body (inside quotes, numbers, multi-byte characters) reads the same rows."""
    if fmt == "csv":
        text = 'phone,last_name,attributes.n:number\n+34600000001,"a, ""b""\nc",12\n+34600000002,ñandú,345\n'
    elif fmt == "ndjson":
        text = '{"phone": "+34600000001", "last_name": "ñandú", "attributes": {"n": 12}}\n{"phone": "+34600000002"}\n'
    else:
        text = '[ {"phone": "+34600000001", "last_name": "ñ\\"x", "attributes": {"n": 12}} ,{"phone": "+34600000002", "attributes": {"n": 345}}]'
    data = text.encode()

    async def cut(at: int) -> AsyncIterator[bytes]:
        yield data[:at]
        yield data[at:]

    async def collect(at: int) -> list:
        out = []
        texts = importer.decode(cut(at))
        async for group in importer.FORMATS[fmt](texts):
            out += [(row, item if isinstance(item, dict) else item.code) for row, item in group]
        return out

    whole = await collect(len(data))
    assert len(whole) == 2
    for at in range(1, len(data)):
        assert await collect(at) == whole, at


# consent --------------------------------------------------------------------------------------


PROOF = {"form_id": "newsletter-footer", "ip": "203.0.113.7", "text_shown": "Yes, send me offers by SMS"}


async def marketing_gate(pool, *keys: tuple[str, str], erasure_keys: ErasureKeys = NO_KEYS) -> tuple[list[str | None], Facts]:
    """What the scheduler decides for a marketing message to each (tenant, phone), from its own
    facts (one load for the batch): the suppression reason code, None when it may go. Decided as
    for a tenant whose marketing needs consent (the default policy; test tenants are opt_out)."""
    items = marketing_to(*keys)
    facts = replace(await FactsRepository(pool, erasure_keys=erasure_keys).load(items), policies={})
    now = utcnow()
    reasons = []
    for tenant_id, message in items:
        decision = suppression_policy(tenant_id, message, facts, now) or consent_policy(tenant_id, message, facts, now)
        reasons.append(decision.reason_code if decision else None)
    return reasons, facts


async def test_consent_grant_revoke_and_the_scheduler_gate(client, pool, tenant: Tenant) -> None:
    c = await create(client, tenant, phone=phone(1))
    url = f"/v1/contacts/{c['contact_id']}/consents"
    r = await client.post(url, json={"purpose": "marketing", "granted": True, "source": "web_form"}, headers=tenant.headers)
    assert error(r) == (422, "proof_required")
    r = await client.post(url, json={"purpose": "marketing", "granted": True, "source": "web_form", "proof": PROOF}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    assert r.json()["current"] is True and r.json()["proof"] == PROOF

    key = (tenant.tenant_id, phone(1))
    assert (await marketing_gate(pool, key))[0] == [None]

    # opt-out: immediate, and the scheduler's existing suppression gate sees it at once
    r = await client.post(url, json={"purpose": "marketing", "granted": False, "source": "sms_keyword"}, headers=tenant.headers)
    assert r.status_code == 201
    facts = await FactsRepository(pool).load(marketing_to(key))
    assert facts.suppressions[key] == "opt_out"
    reasons, facts = await marketing_gate(pool, key)
    assert (reasons, facts.contacts[key].marketing) == (["suppressed"], False)

    # a grant dated before the opt-out is history, not the current state
    r = await client.post(
        url, json={"purpose": "marketing", "granted": True, "source": "crm_sync", "proof": PROOF, "occurred_at": "2020-01-01T00:00:00Z"},
        headers=tenant.headers,
    )
    assert r.json()["current"] is False
    assert (await FactsRepository(pool).load(marketing_to(key))).suppressions.get(key) == "opt_out"

    # opting in again later lifts the suppression
    r = await client.post(url, json={"purpose": "marketing", "granted": True, "source": "web_form", "proof": PROOF}, headers=tenant.headers)
    assert r.json()["current"] is True
    assert key not in (await FactsRepository(pool).load(marketing_to(key))).suppressions
    assert (await marketing_gate(pool, key))[0] == [None]

    # transactional consent is recorded but never touches the suppression list
    r = await client.post(url, json={"purpose": "transactional", "granted": False, "source": "api"}, headers=tenant.headers)
    assert r.status_code == 201
    assert key not in (await FactsRepository(pool).load(marketing_to(key))).suppressions

    history = (await client.get(url, headers=tenant.headers)).json()
    assert [(h["purpose"], h["granted"], h["source"]) for h in history["history"]] == [
        ("transactional", False, "api"),
        ("marketing", True, "web_form"),
        ("marketing", True, "crm_sync"),
        ("marketing", False, "sms_keyword"),
        ("marketing", True, "web_form"),
    ]
    assert (history["current"]["marketing"], history["current"]["transactional"]) == (True, False)

    r = await client.post(url, json={"purpose": "marketing", "granted": True, "source": "x", "proof": {"ip": "not-an-ip"}}, headers=tenant.headers)
    assert error(r) == (422, "validation_failed")
    r = await client.post(url, json={"purpose": "marketing", "granted": False, "source": "x", "occurred_at": "2999-01-01T00:00:00Z"}, headers=tenant.headers)
    assert error(r) == (422, "occurred_in_future")


async def test_the_marketing_gate_for_a_batch(client, pool, tenant: Tenant) -> None:
    other = await make_tenant(pool)
    granted = await create(client, tenant, phone=phone(1))
    await create(client, tenant, phone=phone(2))  # never asked
    revoked = await create(client, tenant, phone=phone(3))
    for cid, ok in ((granted["contact_id"], True), (revoked["contact_id"], False)):
        body = {"purpose": "marketing", "granted": ok, "source": "api"} | ({"proof": PROOF} if ok else {})
        assert (await client.post(f"/v1/contacts/{cid}/consents", json=body, headers=tenant.headers)).status_code == 201
    keys = [(tenant.tenant_id, phone(i)) for i in (1, 2, 3, 4)] + [(other.tenant_id, phone(1))]
    reasons, _ = await marketing_gate(pool, *keys, *keys[:2])
    assert reasons == [None, "no_consent", "suppressed", "no_contact", "no_contact", None, "no_consent"]


# erasure --------------------------------------------------------------------------------------


async def test_erasure_keeps_an_anonymous_suppression(client, pool, tenant: Tenant) -> None:
    number = phone(7)
    c = await create(client, tenant, phone=number, first_name="Eva", attributes={"plan": "pro"})
    cid = c["contact_id"]
    await client.post(f"/v1/contacts/{cid}/consents", json={"purpose": "marketing", "granted": True, "source": "web", "proof": PROOF}, headers=tenant.headers)
    await client.post(f"/v1/contacts/{cid}/consents", json={"purpose": "marketing", "granted": False, "source": "sms_keyword"}, headers=tenant.headers)
    key = (tenant.tenant_id, number)
    assert key in (await FactsRepository(pool).load(marketing_to(key))).suppressions

    assert (await client.delete(f"/v1/contacts/{cid}", headers=tenant.headers)).status_code == 204
    assert error(await client.get(f"/v1/contacts/{cid}", headers=tenant.headers)) == (404, "contact_not_found")
    assert error(await client.delete(f"/v1/contacts/{cid}", headers=tenant.headers)) == (404, "contact_not_found")
    # no trace of the number or the person in clear text
    for table in ("contacts", "contact_consents", "suppressions", "suppression_hashes"):
        rows = await pool.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1", tenant.tenant_id)
        assert not any(number in json.dumps(dict(r), default=str) or "Eva" in json.dumps(dict(r), default=str) for r in rows), table
    hashed = await pool.fetchrow("SELECT * FROM suppression_hashes WHERE tenant_id = $1", tenant.tenant_id)
    assert (hashed["phone_hash"], hashed["reason"], hashed["source"]) == (KEYS.hash(tenant.tenant_id, number), "opt_out", "erasure")
    assert hashed["phone_hash"].startswith("k1:")  # keyed and versioned, not the unkeyed sha256 of before
    assert hashed["phone_hash"] == await pool.fetchval(  # the SQL spelling of segments (pgcrypto, key as a parameter) agrees
        "SELECT 'k1:' || encode(hmac(convert_to($1 || ':' || $2, 'UTF8'), $3::bytea, 'sha256'), 'hex')",
        tenant.tenant_id, number, ERASURE_KEYS["k1"].encode(),
    )

    # the number stays suppressed for marketing, even when a CRM sync creates the contact again
    assert (await marketing_gate(pool, key, erasure_keys=KEYS))[0] == ["suppressed"]
    again = await create(client, tenant, phone=number)
    reasons, facts = await marketing_gate(pool, key, erasure_keys=KEYS)
    assert (reasons, facts.suppressions[key]) == (["suppressed"], "opt_out")
    r = await client.post("/v1/segments/preview", json={"filter": "not suppressed"}, headers=tenant.headers)
    assert r.json()["count"] == 0
    # only a new, proven opt-in lifts it
    await client.post(
        f"/v1/contacts/{again['contact_id']}/consents",
        json={"purpose": "marketing", "granted": True, "source": "web", "proof": PROOF}, headers=tenant.headers,
    )
    assert (await marketing_gate(pool, key, erasure_keys=KEYS))[0] == [None]
    assert (await client.post("/v1/segments/preview", json={"filter": "not suppressed"}, headers=tenant.headers)).json()["count"] == 1


async def test_erasing_a_contact_never_suppressed_still_blocks_marketing(client, pool, tenant: Tenant) -> None:
    c = await create(client, tenant, phone=phone(8))
    assert (await client.delete(f"/v1/contacts/{c['contact_id']}", headers=tenant.headers)).status_code == 204
    key = (tenant.tenant_id, phone(8))
    reasons, facts = await marketing_gate(pool, key, erasure_keys=KEYS)
    assert (reasons, facts.suppressions.get(key), key in facts.contacts) == (["suppressed"], "erased", False)


async def test_erasure_by_number_clears_ingests_tables_publishes_the_event_and_rekeys_an_old_hash(
    env, client, pool, tenant: Tenant
) -> None:
    """A number that is a contact, opted out, replied, is a campaign's test number, and was erased
    once before (unkeyed legacy hash): one POST /v1/erasures leaves only the keyed hash in ingest's
    tables, with ingest's audit row, and hands the number to the other services on Kafka."""
    from shared.contracts import ErasureRequestedEvent
    from shared.erasure import legacy_hash
    from shared.topics import ERASURES
    from tests.helpers import read_topic

    t, number, other = tenant.tenant_id, phone(21), phone(22)
    c = await create(client, tenant, phone=number, first_name="Nuria")
    await client.post(f"/v1/contacts/{c['contact_id']}/consents", headers=tenant.headers,
                      json={"purpose": "marketing", "granted": True, "source": "web", "proof": PROOF})
    await pool.execute("INSERT INTO suppressions (tenant_id, phone_e164, reason, source) VALUES ($1, $2, 'replied STOP', 'api')", t, number)
    await pool.execute("INSERT INTO scoped_suppressions (tenant_id, phone_e164, scope, reason, source)"
                       " VALUES ($1, $2, 'shoes', 'opt_out', 'sms_keyword')", t, number)
    await pool.execute("INSERT INTO inbound_messages (event_id, tenant_id, phone_e164, recipient, body, received_at)"
                       " VALUES ($1, $2, $3, '+34910000000', 'mi secreto', now())", uuid.uuid4(), t, number)
    await pool.execute("INSERT INTO sender_assignments (tenant_id, pool, phone_e164, sender)"
                       " VALUES ($1, 'otp', $2, '+34910000000')", t, number)  # its sticky sender of a pool
    await pool.execute("INSERT INTO suppression_hashes (tenant_id, phone_hash, reason, source) VALUES ($1, $2, 'erased', 'erasure')",
                       t, legacy_hash(t, number))
    await pool.execute("INSERT INTO links (code, tenant_id, message_id, link_index, url, contact_id) VALUES ($1, $2, $3, 0, 'https://shop.example/x', $4)",
                       uuid.uuid4().hex[:12], t, uuid.uuid4(), uuid.UUID(c["contact_id"]))
    campaign = await pool.fetchval("INSERT INTO campaigns (tenant_id, name, segment_filter, variants, test_numbers)"
                                   " VALUES ($1, 'c', 'all', '[]', $2) RETURNING campaign_id", t, [number, other])
    export_id = uuid.uuid4()  # a subject-access export of the number, with a part
    await pool.execute("INSERT INTO subject_access_exports (export_id, tenant_id, phone_e164, requested_by, requested_at, expires_at)"
                       " VALUES ($1, $2, $3, 'k', now(), now() + interval '1 day')", export_id, t, number)
    await pool.execute("INSERT INTO subject_access_parts (export_id, service, attempt, chunk, chunks, tables)"
                       " VALUES ($1, 'ingest', $2, 0, 1, $3)", export_id, uuid.uuid4(), {"inbound_messages": [{"body": "mi secreto"}]})

    r = await client.post("/v1/erasures", json={"phone": number[:3] + " " + number[3:]}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["applied"]["ingest"] == {
        "contacts": 1, "contact_consents": 1, "suppressions": 1, "suppression_hashes_rekeyed": 1, "scoped_suppressions": 1,
        "sender_assignments": 1, "inbound_messages": 1, "links": 1, "campaigns": 1, "subject_access_exports": 1}
    assert answer["pending"] == ["dispatcher", "reports", "scheduler"]
    assert await pool.fetchval("SELECT count(*) FROM subject_access_parts WHERE export_id = $1", export_id) == 0

    for table in ("contacts", "contact_consents", "suppressions", "scoped_suppressions", "inbound_messages", "links",
                  "sender_assignments", "campaigns", "suppression_hashes", "erasure_audit", "subject_access_exports"):
        for row in await pool.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1", t):
            text = json.dumps(dict(row), default=str)
            assert number not in text and number[1:] not in text and "mi secreto" not in text and "Nuria" not in text, table
    assert await pool.fetchval("SELECT test_numbers FROM campaigns WHERE campaign_id = $1", campaign) == [other]
    hashes = await pool.fetch("SELECT phone_hash, reason FROM suppression_hashes WHERE tenant_id = $1", t)
    assert [(h["phone_hash"], h["reason"]) for h in hashes] == [(KEYS.hash(t, number), "replied STOP")]  # re-keyed
    key = (t, number)
    reasons, facts = await marketing_gate(pool, key, erasure_keys=KEYS)
    assert (reasons, facts.suppressions.get(key)) == (["suppressed"], "replied STOP")

    records = await read_topic(env.bootstrap, ERASURES.name(env.prefix),
                               lambda rs: any(answer["erasure_id"].encode() in x.value for x in rs))
    (record,) = [x for x in records if answer["erasure_id"].encode() in x.value]
    event = ErasureRequestedEvent.model_validate_json(record.value)
    assert (event.tenant, event.payload.phone, event.payload.phone_hash) == (t, number, KEYS.hash(t, number))
    assert number[1:].encode() not in record.key  # the record key carries the hash, not the number

    status = (await client.get(f"/v1/erasures/{answer['erasure_id']}", headers=tenant.headers)).json()
    assert (status["phone_hash"], list(status["applied"]), status["complete"]) == (KEYS.hash(t, number), ["ingest"], False)
    assert status["applied"]["ingest"]["counts"] == answer["applied"]["ingest"]
    assert error(await client.get(f"/v1/erasures/{uuid.uuid4()}", headers=tenant.headers)) == (404, "erasure_not_found")
    stranger = await make_tenant(pool)
    assert error(await client.get(f"/v1/erasures/{answer['erasure_id']}", headers=stranger.headers)) == (404, "erasure_not_found")

    again = await client.post("/v1/erasures", json={"phone": number}, headers=tenant.headers)  # harmless
    assert again.status_code == 202 and not any(again.json()["applied"]["ingest"].values())
    assert await pool.fetchval("SELECT count(*) FROM suppression_hashes WHERE tenant_id = $1", t) == 1
    assert error(await client.post("/v1/erasures", json={"phone": "+34123"}, headers=tenant.headers))[0] == 422


async def test_erasure_without_a_key_is_refused_and_erases_nothing(env, pool, tenant: Tenant) -> None:
    app = FastAPI()
    deps.install(app, IngestSettings(erasure_keys={}), pool, None)  # the publisher is never reached
    install_error_handlers(app)
    app.include_router(audience_router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as http:
        c = await create(http, tenant, phone=phone(23))
        assert error(await http.post("/v1/erasures", json={"phone": phone(23)}, headers=tenant.headers)) == (503, "erasure_key_missing")
        assert error(await http.delete(f"/v1/contacts/{c['contact_id']}", headers=tenant.headers)) == (503, "erasure_key_missing")
        assert (await http.get(f"/v1/contacts/{c['contact_id']}", headers=tenant.headers)).status_code == 200
    assert await pool.fetchval("SELECT count(*) FROM suppression_hashes WHERE tenant_id = $1", tenant.tenant_id) == 0


# segments -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def audience(client, pool) -> Tenant:
    """200 contacts with known fields, for segment tests."""
    t = await make_tenant(pool)
    rows = []
    for i in range(200):
        row = {
            "phone": phone(i),
            "first_name": f"N{i}",
            "language": ["es", "en", "fr", "pt-BR"][i % 4],
            "tags": (["vip"] if i % 5 == 0 else []) + (["newsletter"] if i % 2 == 0 else []),
            "attributes": {"plan": ["free", "pro", "team"][i % 3], "score": i, "last_purchase_at": f"2025-01-{1 + i % 28:02d}"},
            "last_activity_at": f"2025-{1 + i % 12:02d}-01T00:00:00Z" if i % 7 else None,
        }
        if i % 50 == 0:
            row["country"] = "PT"
        rows.append(row)
    r = await client.post("/v1/contacts/import", json=rows, headers=t.headers)
    assert r.json()["created"] == 200, r.text
    repo = AudienceRepository(pool)
    for i in range(0, 200, 4):  # every 4th contact grants marketing consent
        cid = (await repo.list_contacts(t.tenant_id, after=None, limit=1, phone=phone(i)))[0]["contact_id"]
        await repo.record_consent(t.tenant_id, uuid.UUID(cid), purpose="marketing", granted=True, source="t", occurred_at=datetime.now(UTC), proof={})
    return t


def expected(pred) -> int:
    return sum(1 for i in range(200) if pred(i))


@pytest.mark.parametrize(
    ("text", "pred"),
    [
        ("all", lambda i: True),
        ('country = "es"', lambda i: i % 50 != 0),
        ('country != "ES"', lambda i: i % 50 == 0),
        ('"vip" in tags', lambda i: i % 5 == 0),
        ('"vip" not in tags and "newsletter" in tags', lambda i: i % 5 != 0 and i % 2 == 0),
        ('plan = "pro"', lambda i: i % 3 == 1),
        ('attributes.plan in ["pro", "team"]', lambda i: i % 3 != 0),
        ('plan not in ["pro"]', lambda i: i % 3 != 1),
        ("score >= 150", lambda i: i >= 150),
        ("score > 10 and score <= 20 or score = 0", lambda i: 10 < i <= 20 or i == 0),
        ("not (score < 100)", lambda i: i >= 100),
        ('last_purchase_at < "2025-01-05"', lambda i: i % 28 < 4),
        ("last_purchase_at < now()", lambda i: True),
        ("last_activity_at < now() - interval '1 day'", lambda i: i % 7 != 0),
        ('last_activity_at >= "2025-06-01"', lambda i: i % 7 != 0 and i % 12 >= 5),
        ("not exists last_activity_at", lambda i: i % 7 == 0),
        ("exists score and not exists missing", lambda i: True),
        ('language = "pt-br"', lambda i: i % 4 == 3),
        ('language in ["en", "fr"]', lambda i: i % 4 in (1, 2)),
        ("consent.marketing = true", lambda i: i % 4 == 0),
        ("consent.marketing = false", lambda i: i % 4 != 0),
        ("consent.marketing and not suppressed", lambda i: i % 4 == 0),
        ('first_name = "N7"', lambda i: i == 7),
        ('plan = 1', lambda i: False),
        ('score = "5"', lambda i: False),  # a string never equals a number
    ],
)
async def test_segment_preview_counts(client, audience: Tenant, text, pred) -> None:
    r = await client.post("/v1/segments/preview", json={"filter": text}, headers=audience.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == expected(pred), text
    assert len(body["sample"]) == min(10, body["count"])
    assert all(pred(int(c["first_name"][1:])) for c in body["sample"])


@pytest.mark.parametrize(
    ("text", "code", "column"),
    [
        ('country = "ES" and', "unexpected_end", 19),
        ('country = "ES" && "vip" in tags', "unexpected_character", 16),
        ("country = ES", "unexpected_token", 11),
        ("foo.bar = 1", "unknown_field", 1),
        ('tags = "vip"', "operator_not_allowed", 6),
        ("last_activity_at < now() - interval 'soon'", "invalid_interval", 37),
        ("", "empty_filter", None),
    ],
)
async def test_segment_errors(client, tenant: Tenant, text, code, column) -> None:
    r = await client.post("/v1/segments/preview", json={"filter": text}, headers=tenant.headers)
    assert error(r) == (422, "segment_invalid"), r.text
    detail = r.json()["error"]["details"][0]
    assert (detail["code"], detail.get("column")) == (code, column)


@pytest.mark.parametrize(
    "text",
    [
        "country = \"ES'; DROP TABLE contacts; --\"",
        "first_name = \"x' OR '1'='1\"",
        "plan = \"\\\"}' OR 1=1 --\"",
        "\"vip'); DELETE FROM contacts; --\" in tags",
        "last_activity_at < now() - interval '1 day''; DROP TABLE contacts; --'",
        "last_activity_at < now() - interval '1 day); DROP TABLE contacts; --'",
        "attributes.x = 1; DROP TABLE contacts",
        "country = \"ES\" or 1=1",
        "country = \"ES\" -- comment",
        "country in [\"ES\", (SELECT 'FR')]",
        "plan = \"a\" union select * from api_keys",
        "exists attributes.x' or '1'='1",
        "attributes.\"plan\" = 1",
    ],
)
async def test_segment_injection_attempts(client, pool, audience: Tenant, text) -> None:
    r = await client.post("/v1/segments/preview", json={"filter": text}, headers=audience.headers)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        assert r.json()["count"] == 0  # the attempt is just a value nobody has
    else:
        assert r.json()["error"]["code"] == "segment_invalid"
    assert await pool.fetchval("SELECT count(*) FROM contacts WHERE tenant_id = $1", audience.tenant_id) == 200


async def test_segments_use_the_indexes(pool) -> None:
    """With statistics, the planner answers selective filters from the GIN and btree indexes."""
    from services.ingest.audience.segments import compile_sql

    t = await make_tenant(pool)
    rows = []
    for i in range(5000):
        rare = i % 100 == 0
        data = {
            "phone": phone(i),
            "tags": ["vip-idx"] if rare else ["regular"],
            "attributes": {"plan": "platinum" if rare else "free"},
            "country": "PT" if rare else None,
            "last_activity_at": "2020-01-01" if rare else "2099-01-01",
        }
        rows.append(importer.check_contact(data, allowed_types=None)[0])
    await AudienceRepository(pool).upsert_contacts(t.tenant_id, rows)
    await pool.execute("UPDATE contacts SET consent_marketing = true WHERE tenant_id = $1 AND tags = '{vip-idx}'", t.tenant_id)
    await pool.execute("ANALYZE contacts")
    for text, index in [
        ('"vip-idx" in tags', "contacts_tags"),
        ('plan = "platinum"', "contacts_attributes"),
        ('country = "PT"', "contacts_country"),
        ("last_activity_at < now() - interval '30 days'", "contacts_last_activity"),
        ("consent.marketing", "contacts_marketing_consent"),
    ]:
        compiled = compile_sql(parse(text), first_param=2)
        plan = await pool.fetch(f"EXPLAIN SELECT 1 FROM contacts c WHERE c.tenant_id = $1 AND {compiled.sql}", t.tenant_id, *compiled.params)
        assert index in "\n".join(r[0] for r in plan), (text, [r[0] for r in plan])


async def test_named_segments(client, pool, audience: Tenant) -> None:
    r = await client.post("/v1/segments", json={"name": "pro vips", "filter": 'plan = "pro" AND "vip" IN tags'}, headers=audience.headers)
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["normalized"] == 'attributes.plan = "pro" and "vip" in tags'
    assert error(await client.post("/v1/segments", json={"name": "pro vips", "filter": "all"}, headers=audience.headers)) == (409, "segment_exists")
    assert error(await client.post("/v1/segments", json={"name": "bad", "filter": "plan ="}, headers=audience.headers)) == (422, "segment_invalid")
    assert (await client.get(f"/v1/segments/{s['segment_id']}", headers=audience.headers)).json() == s
    listed = (await client.get("/v1/segments", headers=audience.headers)).json()["segments"]
    assert [x["name"] for x in listed] == ["pro vips"]
    other = await make_tenant(pool)
    assert error(await client.get(f"/v1/segments/{s['segment_id']}", headers=other.headers)) == (404, "segment_not_found")


async def test_audience_streams_in_keyset_batches_and_resumes(pool, audience: Tenant) -> None:
    repo = AudienceRepository(pool)
    node = parse('"newsletter" in tags')
    batches = [b async for b in repo.iter_audience(audience.tenant_id, node, batch_size=30)]
    ids = [m.contact_id for b in batches for m in b]
    assert [len(b) for b in batches] == [30, 30, 30, 10]
    assert len(ids) == len(set(ids)) == 100 and ids == sorted(ids)
    assert all(int(m.first_name[1:]) % 2 == 0 for b in batches for m in b)
    # pause after the second batch, resume from its last id: the rest, no duplicates
    rest = [m.contact_id async for b in repo.iter_audience(audience.tenant_id, node, batch_size=30, after=batches[1][-1].contact_id) for m in b]
    assert rest == ids[60:]
    other = await make_tenant(pool)
    assert [b async for b in repo.iter_audience(other.tenant_id, node)] == []


# templates ------------------------------------------------------------------------------------


async def test_templates(client, pool, tenant: Tenant) -> None:
    await register_senders(pool, tenant.tenant_id, "Acme")  # a template names one of its tenant's verified senders
    body = {
        "name": "spring sale",
        "purpose": "marketing",
        "sender": "Acme",
        "default_language": "en",
        "variants": {"en": "Hi {{first_name|there}}, {{attributes.discount|10}}% off today", "es": "Hola {{first_name|}}, {{attributes.discount|10}}% hoy"},
    }
    r = await client.post("/v1/templates", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    t = r.json()
    assert error(await client.post("/v1/templates", json=body, headers=tenant.headers)) == (409, "template_exists")
    assert (await client.get(f"/v1/templates/{t['template_id']}", headers=tenant.headers)).json() == t
    assert [x["name"] for x in (await client.get("/v1/templates", headers=tenant.headers)).json()["templates"]] == ["spring sale"]

    url = f"/v1/templates/{t['template_id']}/preview"
    sample = (await client.post(url, headers=tenant.headers)).json()
    assert sample["text"] == "Hi Alex, 10% off today\nReply STOP to opt out"
    assert (sample["encoding"], sample["segments"], sample["opt_out_appended"]) == ("GSM-7", 1, True)

    c = await create(client, tenant, phone=phone(1), first_name="Lucía", language="es-MX", attributes={"discount": 25})
    r = await client.post(url, json={"contact_id": c["contact_id"]}, headers=tenant.headers)
    p = r.json()
    assert p["text"] == "Hola Lucía, 25% hoy\nResponde BAJA para darte de baja"
    assert (p["language"], p["sender"], p["encoding"]) == ("es", "Acme", "UCS-2")  # í is not GSM-7

    p = (await client.post(url, json={"contact": {"language": "de", "first_name": "Jörg"}}, headers=tenant.headers)).json()
    assert p["text"] == "Hi Jörg, 10% off today\nAntworte STOP zum Abmelden"  # no German variant: English, German opt-out
    assert p["missing_fields"] == ["attributes.discount"]

    other = await make_tenant(pool)
    assert error(await client.get(f"/v1/templates/{t['template_id']}", headers=other.headers)) == (404, "template_not_found")
    assert error(await client.post(url, headers=other.headers)) == (404, "template_not_found")
    assert error(await client.post(url, json={"contact_id": str(uuid.uuid4())}, headers=tenant.headers)) == (404, "contact_not_found")


async def test_invalid_templates(client, tenant: Tenant) -> None:
    r = await client.post(
        "/v1/templates",
        json={"name": "x", "sender": "far too long a sender", "default_language": "fr",
              "variants": {"en": "Hi {{frist_name|there}} {{ oops", "english": "x"}},
        headers=tenant.headers,
    )
    assert error(r) == (422, "template_invalid")
    found = {(d["loc"], d["code"]) for d in r.json()["error"]["details"]}
    assert found == {
        ("body.sender", "invalid_sender"),
        ("body.default_language", "default_language_missing"),
        ("body.variants.en", "unknown_field"),
        ("body.variants.en", "invalid_placeholder"),
        ("body.variants.english", "invalid_language"),
    }


async def test_ingest_app_mounts_the_audience_routes(env, pool) -> None:
    from services.ingest.api import create_app

    app = create_app(IngestSettings(), pool, None, None, None)  # type: ignore[arg-type]
    paths = set(app.openapi()["paths"])
    assert {"/v1/contacts", "/v1/contacts/import", "/v1/segments/preview", "/v1/templates/{template_id}/preview"} <= paths


def test_random_tags_roundtrip() -> None:
    """Tags survive the separator used to send them in one array (no tag may hold it)."""
    rng = random.Random(4)
    for _ in range(200):
        tags = ["".join(rng.choice("ab-_:. é") for _ in range(rng.randint(1, 8))).strip() or "x" for _ in range(3)]
        checked, errors = importer.check_contact({"phone": phone(1), "tags": tags}, allowed_types=None)
        assert not errors
        assert importer.TAG_SEPARATOR not in "".join(checked.values["tags"])


# hostile filters and previews ----------------------------------------------------------------------


async def test_out_of_range_intervals_and_dates_are_refused_with_a_reason(client, tenant: Tenant) -> None:
    for text, code in [("last_activity_at < now() - interval '9999 years'", "interval_out_of_range"),
                       ('created_at > "0001-01-01"', "date_out_of_range")]:
        r = await client.post("/v1/segments/preview", json={"filter": text}, headers=tenant.headers)
        assert error(r) == (422, "segment_invalid"), r.text
        assert r.json()["error"]["details"][0]["code"] == code
        r = await client.post("/v1/segments", json={"name": f"bad-{code}", "filter": text}, headers=tenant.headers)
        assert error(r) == (422, "segment_invalid"), r.text
        assert r.json()["error"]["details"][0]["code"] == code


async def test_expensive_previews_are_limited_per_tenant_and_per_instance(env, pool) -> None:
    """With the contacts table locked, previews hang: a tenant gets at most its in-flight cap and
    the instance its semaphore; the rest answer 429 at once with Retry-After."""
    app = FastAPI()
    deps.install(app, IngestSettings(segment_preview_concurrency=3, segment_preview_per_tenant=2), pool, None)
    install_error_handlers(app)
    app.include_router(audience_router)
    a, b, c = await make_tenant(pool), await make_tenant(pool), await make_tenant(pool)
    body = {"filter": 'country = "ES"'}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest", timeout=60) as http:
        async with pool.acquire() as locker:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE")
            held = [asyncio.ensure_future(http.post("/v1/segments/preview", json=body, headers=t.headers)) for t in (a, a)]
            await asyncio.sleep(0.5)
            assert not any(h.done() for h in held), "both previews of tenant a are waiting on the lock"
            over = await asyncio.wait_for(http.post("/v1/segments/preview", json=body, headers=a.headers), 5)
            assert error(over) == (429, "too_many_previews"), over.text
            assert int(over.headers["Retry-After"]) >= 1
            held.append(asyncio.ensure_future(http.post("/v1/segments/preview", json=body, headers=b.headers)))
            await asyncio.sleep(0.3)
            full = await asyncio.wait_for(http.post("/v1/segments/preview", json=body, headers=c.headers), 5)
            assert error(full) == (429, "too_many_previews"), full.text
            assert "Retry-After" in full.headers
            await tx.rollback()
        done = await asyncio.gather(*held)
        assert [r.status_code for r in done] == [200, 200, 200]
        # the slots are given back
        assert (await http.post("/v1/segments/preview", json=body, headers=c.headers)).status_code == 200


async def test_a_subject_access_request_is_stored_published_and_scoped(env, client, pool) -> None:
    """POST /v1/subject-access: contacts:export only; by number or contact; the request travels on
    herald.subject-access.v1 keyed by tenant and export id (never the number); the export is its
    tenant's alone and pending until the services' parts are in."""
    from shared.auth import DEFAULT_SCOPES
    from shared.contracts import SubjectAccessRequestedEvent
    from shared.topics import SUBJECT_ACCESS
    from tests.helpers import read_topic

    tenant = await make_tenant(pool, scopes=(*DEFAULT_SCOPES, "contacts:export"))
    plain = await make_tenant(pool)
    number = phone(31)
    c = await create(client, tenant, phone=number)
    assert error(await client.post("/v1/subject-access", json={"phone": number}, headers=plain.headers)) == (
        403, "insufficient_scope")
    assert error(await client.post("/v1/subject-access", json={}, headers=tenant.headers)) == (422, "validation_failed")
    assert error(await client.post("/v1/subject-access", json={"phone": number, "contact_id": c["contact_id"]},
                                   headers=tenant.headers)) == (422, "validation_failed")
    assert error(await client.post("/v1/subject-access", json={"contact_id": str(uuid.uuid4())},
                                   headers=tenant.headers)) == (404, "contact_not_found")
    assert error(await client.post("/v1/subject-access", json={"phone": "+34123"}, headers=tenant.headers))[0] == 422

    r = await client.post("/v1/subject-access", json={"contact_id": c["contact_id"]}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    export_id = r.json()["export_id"]
    records = await read_topic(env.bootstrap, SUBJECT_ACCESS.name(env.prefix), lambda rs: any(export_id.encode() in x.value for x in rs))
    (record,) = [x for x in records if export_id.encode() in x.value]
    event = SubjectAccessRequestedEvent.model_validate_json(record.value)
    assert (event.tenant, event.payload.phone, str(event.payload.contact_id)) == (tenant.tenant_id, number, c["contact_id"])
    assert number[1:].encode() not in record.key
    row = await pool.fetchrow("SELECT * FROM subject_access_exports WHERE export_id = $1::uuid", export_id)
    assert (row["tenant_id"], row["phone_e164"], row["requested_by"]) == (tenant.tenant_id, number, tenant.key.split("_")[1])
    assert row["phone_hash"] == KEYS.hash(tenant.tenant_id, number)

    status = (await client.get(f"/v1/subject-access/{export_id}", headers=tenant.headers)).json()
    assert (status["status"], status["pending"], "document" in status) == (
        "pending", ["dispatcher", "ingest", "reports", "scheduler"], False)
    other = await make_tenant(pool, scopes=(*DEFAULT_SCOPES, "contacts:export"))
    assert error(await client.get(f"/v1/subject-access/{export_id}", headers=other.headers)) == (404, "export_not_found")
    assert error(await client.get("/v1/subject-access/not-an-id", headers=tenant.headers)) == (404, "export_not_found")
