"""ingest's HTTP API in-process against the real PostgreSQL and Kafka."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from services.ingest.api import create_app
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from shared.auth import revoke_key
from shared.contracts import DeliveryReceiptEvent, MessageAcceptedEvent
from shared.kafka import Publisher, make_producer
from shared.signatures import sign
from shared.topics import ACCEPTED, RECEIPTS, REJECTED
from tests.conftest import Tenant, make_tenant
from tests.helpers import read_topic, rejected_events

pytestmark = pytest.mark.integration
RECEIPT_SECRET = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
async def client(env, pool) -> AsyncIterator[httpx.AsyncClient]:
    settings = IngestSettings(batch_max_messages=50, receipt_secrets={"sim": SecretStr(RECEIPT_SECRET)})
    producer = make_producer(settings, "test-ingest")
    await producer.start()
    repository = IngestRepository(pool)

    app = create_app(settings, pool, Acceptor(repository, settings), Publisher(producer, env.prefix, "ingest"), repository)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as c:
        yield c
    await producer.stop()


MSG = {"to": "+34600000001", "body": "Your code is 123456"}


async def test_auth(client: httpx.AsyncClient, pool, tenant: Tenant) -> None:
    r = await client.post("/v1/messages", json=MSG)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "missing_api_key")
    r = await client.post("/v1/messages", json=MSG, headers={"Authorization": "Bearer hk_nope_nope"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key")
    reader = await make_tenant(pool, scopes=("messages:read",))
    r = await client.post("/v1/messages", json=MSG, headers=reader.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "insufficient_scope")
    r = await client.post("/v1/messages", json=MSG, headers=tenant.headers)
    assert r.status_code == 202
    async with pool.acquire() as conn:
        await revoke_key(conn, tenant.key.split("_")[1])
    r = await client.post("/v1/messages", json=MSG, headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "revoked_api_key")


@pytest.mark.parametrize(
    ("body", "code", "loc"),
    [
        ({"to": "+34123", "body": "x"}, "impossible_number", "to"),
        ({"to": "600000001", "body": "x"}, "not_e164", "to"),
        ({"to": "+447700900123", "body": "x"}, "invalid_number", "to"),
        ({"to": "+34910000000", "body": "x"}, "unsupported_number_type", "to"),
        ({"to": "+34803123456", "body": "x"}, "unsupported_number_type", "to"),
        ({"to": "+34600000001", "body": ""}, "validation_failed", "body.body"),
        ({"to": "+34600000001", "body": "x" * 1601}, "validation_failed", "body.body"),
        ({"to": "+34600000001", "body": "x", "colour": "red"}, "validation_failed", "body.colour"),
        ({"to": "+34600000001", "body": "x", "type": "spam"}, "validation_failed", "body.type"),
        ({"to": "+34600000001", "body": 5}, "validation_failed", "body.body"),
        ({"to": "+34600000001", "body": "x", "status_callback_url": "nope"}, "validation_failed", "body.status_callback_url"),
    ],
)
async def test_bad_messages_get_specific_reasons(client, tenant: Tenant, body, code, loc) -> None:
    r = await client.post("/v1/messages", json=body, headers=tenant.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert error["details"][0]["loc"] == loc


async def test_malformed_json(client, tenant: Tenant) -> None:
    r = await client.post("/v1/messages", content=b"{nope", headers={**tenant.headers, "content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "malformed_json")
    r = await client.post("/v1/messages/batch", content=b"{nope", headers={**tenant.headers, "content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "malformed_json")


async def test_idempotency(client, tenant: Tenant, env) -> None:
    key = uuid.uuid4().hex
    first = await client.post("/v1/messages", json={**MSG, "idempotency_key": key}, headers=tenant.headers)
    again = await client.post("/v1/messages", json={**MSG, "idempotency_key": key}, headers=tenant.headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["message_id"] == again.json()["message_id"]
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    other = await client.post("/v1/messages", json={**MSG, "body": "different", "idempotency_key": key}, headers=tenant.headers)
    assert (other.status_code, other.json()["error"]["code"]) == (409, "idempotency_conflict")
    # Both publishes carry the same event id, so consumers keep one.
    mid = first.json()["message_id"]
    records = await read_topic(env.bootstrap, ACCEPTED.name(env.prefix), lambda rs: sum(mid.encode() in r.value for r in rs) >= 2)
    events = [MessageAcceptedEvent.model_validate_json(r.value) for r in records if mid.encode() in r.value]
    assert len({e.event_id for e in events}) == 1


async def test_batch_partial_and_limits(client, tenant: Tenant) -> None:
    key = uuid.uuid4().hex
    items = [
        {**MSG, "idempotency_key": key},
        {"to": "+34123", "body": "x"},
        {**MSG, "idempotency_key": key},  # same key, same content, in one batch: same id
        {**MSG, "body": "😀 unicode"},
    ]
    r = await client.post("/v1/messages/batch", json={"messages": items}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (3, 1)
    results = body["results"]
    assert results[1]["error"]["code"] == "impossible_number"
    assert results[0]["message_id"] == results[2]["message_id"] and results[2]["duplicate"] is True
    assert results[3]["encoding"] == "UCS-2"
    r = await client.post("/v1/messages/batch", json={"messages": [MSG] * 51}, headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "batch_too_large")
    r = await client.post("/v1/messages/batch", json={"messages": []}, headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "empty_batch")
    r = await client.post("/v1/messages/batch", json={"messages": [{"to": "x", "body": "y"}]}, headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "all_rejected")
    r = await client.post("/v1/messages/batch", json=[MSG], headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_failed")


async def test_suppressions(client, tenant: Tenant) -> None:
    r = await client.put("/v1/suppressions/+34600000009", json={"reason": "stop"}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["phone"] == "+34600000009"
    r = await client.put("/v1/suppressions/12345", headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "not_e164")
    assert (await client.delete("/v1/suppressions/+34600000009", headers=tenant.headers)).status_code == 204
    r = await client.delete("/v1/suppressions/+34600000009", headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_suppressed")


async def test_receipts_need_a_valid_signature(client, env) -> None:
    gw_id = f"sim-{uuid.uuid4().hex}"
    body = json.dumps({"receipts": [
        {"id": gw_id, "status": "delivered", "error_code": "000", "done_at": "2026-11-25T10:00:00Z"},
        {"id": gw_id + "x", "status": "weird"},
    ]}).encode()
    headers = {"content-type": "application/json"}
    r = await client.post("/v1/receipts/sim", content=body, headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_missing")
    r = await client.post("/v1/receipts/sim", content=body, headers={**headers, "X-Herald-Signature": sign(b"wrong", body, int(time.time()))})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_invalid")
    # An unknown gateway is answered as a wrong signature is: the answer does not tell which names exist.
    r = await client.post("/v1/receipts/nowhere", content=body, headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_missing")
    now = int(time.time())
    r = await client.post("/v1/receipts/nowhere", content=body,
                          headers={**headers, "X-Herald-Signature": sign(RECEIPT_SECRET.encode(), body, now, context="nowhere")})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_invalid")
    # The signature binds the gateway: one made for another gateway (same secret), or the
    # unbound v1 form, is refused.
    for header in (sign(RECEIPT_SECRET.encode(), body, now, context="other"), sign(RECEIPT_SECRET.encode(), body, now)):
        r = await client.post("/v1/receipts/sim", content=body, headers={**headers, "X-Herald-Signature": header})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_invalid"), header
    signed = {**headers, "X-Herald-Signature": sign(RECEIPT_SECRET.encode(), body, now, context="sim")}
    r = await client.post("/v1/receipts/sim", content=body, headers=signed)
    assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (1, 1)
    records = await read_topic(env.bootstrap, RECEIPTS.name(env.prefix), lambda rs: any(gw_id.encode() in r.value for r in rs))
    receipt = next(DeliveryReceiptEvent.model_validate_json(r.value) for r in records if gw_id.encode() in r.value)
    assert receipt.payload.status == "delivered"
    rejected = await read_topic(env.bootstrap, REJECTED.name(env.prefix), lambda rs: any(b"weird" in r.value for r in rs))
    reason = next(e for e in rejected_events(rejected) if "weird" in e.payload.original)
    assert reason.payload.reason_code == "unknown_status" and reason.payload.source == "receipts:sim"


class FailingAfter:
    """The real publisher, except that its first publish sends only the first ``n`` events
    to the broker and then fails the way an unreachable broker does."""

    def __init__(self, inner: Publisher, n: int) -> None:
        self.inner = inner
        self.n = n
        self.failed = False

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def publish(self, items) -> None:
        if not self.failed:
            self.failed = True
            await self.inner.publish(list(items)[: self.n])
            from aiokafka.errors import KafkaConnectionError

            raise KafkaConnectionError("broker went away in the middle of the batch")
        await self.inner.publish(items)


@pytest.fixture
async def failing_once(env, pool) -> AsyncIterator[tuple[httpx.AsyncClient, FailingAfter]]:
    settings = IngestSettings(batch_max_messages=50)
    producer = make_producer(settings, "test-ingest-failing")
    await producer.start()
    repository = IngestRepository(pool)
    publisher = FailingAfter(Publisher(producer, env.prefix, "ingest"), 3)

    app = create_app(settings, pool, Acceptor(repository, settings), publisher, repository)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as c:
        yield c, publisher
    await producer.stop()


async def accepted_ids(env, marker: str, until) -> dict[str, set[str]]:
    """message ids seen on the accepted topic per body, for this test's bodies."""
    records = await read_topic(
        env.bootstrap, ACCEPTED.name(env.prefix), lambda rs: until([r for r in rs if marker.encode() in r.value])
    )
    ids: dict[str, set[str]] = {}
    for r in records:
        if marker.encode() in r.value:
            event = MessageAcceptedEvent.model_validate_json(r.value)
            assert event.event_id == event.payload.message_id
            ids.setdefault(event.payload.body, set()).add(str(event.payload.message_id))
    return ids


async def test_a_batch_retried_after_a_partial_publish_sends_no_message_twice(failing_once, tenant: Tenant, env) -> None:
    """The broker fails after 3 of 6 events: the caller gets 503 and retries the same batch
    with the same Idempotency-Key header; each message keeps the one id it got, so the first
    three (already on the topic) are not queued again as new messages."""
    client, publisher = failing_once
    marker = uuid.uuid4().hex[:8]
    batch = {"messages": [{**MSG, "body": f"{marker} item {i}"} for i in range(6)]}
    key = f"order-{marker}"
    headers = {**tenant.headers, "Idempotency-Key": key}
    r = await client.post("/v1/messages/batch", json=batch, headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "broker_unavailable") and publisher.failed
    first = await accepted_ids(env, marker, lambda rs: len(rs) >= 3)
    assert sorted(first) == [f"{marker} item {i}" for i in range(3)]
    again = await client.post("/v1/messages/batch", json=batch, headers=headers)
    assert again.status_code == 202, again.text
    answered = {f"{marker} item {a['index']}": a["message_id"] for a in again.json()["results"]}
    ids = await accepted_ids(env, marker, lambda rs: len(rs) >= 9)
    assert {body: len(found) for body, found in ids.items()} == {f"{marker} item {i}": 1 for i in range(6)}, (
        "a message published twice under two ids would be sent twice"
    )
    assert {body: next(iter(found)) for body, found in ids.items()} == answered
    for i in range(3):  # the retry publishes the same event (same id) again: consumers keep one
        assert next(iter(first[f"{marker} item {i}"])) == answered[f"{marker} item {i}"]
    assert r.headers["Idempotency-Key"] == key
    assert again.json()["idempotency_key"] == key and again.headers["Idempotency-Key"] == key
    assert all(a["duplicate"] for a in again.json()["results"])
    # The same key with another batch is a conflict; nothing of it is queued.
    changed = {"messages": [{**MSG, "body": f"{marker} other"}]}
    r = await client.post("/v1/messages/batch", json=changed, headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "idempotency_conflict")


async def test_a_batch_without_a_key_gets_one_to_retry_with(failing_once, tenant: Tenant, env) -> None:
    """Without an Idempotency-Key header ingest makes one and returns it (also on the 503):
    retrying with it is safe. A new request without a header is a new batch."""
    client, _ = failing_once
    marker = uuid.uuid4().hex[:8]
    batch = {"messages": [{**MSG, "body": f"{marker} item {i}"} for i in range(5)]}
    r = await client.post("/v1/messages/batch", json=batch, headers=tenant.headers)
    assert r.status_code == 503
    key = r.headers["Idempotency-Key"]
    assert key and r.json()["error"]["details"][0]["loc"] == "header.Idempotency-Key"
    again = await client.post("/v1/messages/batch", json=batch, headers={**tenant.headers, "Idempotency-Key": key})
    assert again.status_code == 202 and again.json()["idempotency_key"] == key
    ids = await accepted_ids(env, marker, lambda rs: len(rs) >= 8)
    assert {body: len(found) for body, found in ids.items()} == {f"{marker} item {i}": 1 for i in range(5)}
    fresh = await client.post("/v1/messages/batch", json=batch, headers=tenant.headers)
    assert fresh.status_code == 202 and fresh.json()["idempotency_key"] != key
    assert not any(a["duplicate"] for a in fresh.json()["results"])
    assert {a["message_id"] for a in fresh.json()["results"]}.isdisjoint({a["message_id"] for a in again.json()["results"]})


async def test_every_refused_send_is_counted_by_its_code(client: httpx.AsyncClient, tenant: Tenant) -> None:
    """herald_ingest_requests_rejected_total counts the requests refused before a route ran
    (a body that fails the schema, JSON that does not parse, another content type) as well as
    those the route refuses, as the demo's summary counts them."""
    from services.ingest import metrics

    def count(code: str) -> float:
        return metrics.REQUESTS_REJECTED.labels(code)._value.get()

    codes = ("validation_failed", "template_or_body", "malformed_json", "unsupported_media_type", "not_e164")
    before = {c: count(c) for c in codes}
    answers = [
        await client.post("/v1/messages", json={"to": "+34600000001", "body": ""}, headers=tenant.headers),  # empty body
        await client.post("/v1/messages", json={"to": "+34600000001"}, headers=tenant.headers),  # no body nor template
        await client.post("/v1/messages", content=b'{"to": ', headers={**tenant.headers, "content-type": "application/json"}),
        await client.post("/v1/messages", content=b"to=+34600000001", headers={**tenant.headers, "content-type": "text/plain"}),
        await client.post("/v1/messages", json={"to": "600000001", "body": "x"}, headers=tenant.headers),
    ]
    assert [(r.status_code, r.json()["error"]["code"]) for r in answers] == [
        (422, "validation_failed"), (422, "template_or_body"), (422, "malformed_json"), (415, "unsupported_media_type"),
        (422, "not_e164")]
    assert {c: count(c) - before[c] for c in before} == {c: 1 for c in codes}
