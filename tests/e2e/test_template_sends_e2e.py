"""Sending by template through all four services and the simulator: a single send, a batch
and signed trigger events name a template and per-send values; each message is rendered in its
recipient's language, delivered, and its report names the template version. After an update
the next send uses the new version; an archived or unknown template is refused (422 on the
API, the rejected-events topic with the reason on the trigger topic)."""

from __future__ import annotations

import random
import uuid

import httpx
import pytest

from herald_tools.stack import Stack
from shared.contracts import MessageAcceptedEvent, MessageRequest, TriggerEvent
from shared.statuses import FINAL
from shared.topics import ACCEPTED, ACCEPTED_BULK, REJECTED, TRIGGERS
from tests.conftest import make_tenant, register_senders
from tests.helpers import produce_raw, read_topic, rejected_events, signed, wait_for

pytestmark = pytest.mark.e2e
FINAL_NAMES = [s.value for s in FINAL]

US_LONG_CODE = f"+1201{random.randrange(2_000_000, 10_000_000)}"  # a New Jersey number of its own per run
TEMPLATE = {
    "purpose": "transactional", "default_language": "en", "sender": "Acme",
    "variants": {"en": "Hi {{first_name|there}}, your order {{values.order}} has shipped",
                 "es": "Hola {{first_name|}}, tu pedido {{values.order}} ha salido"},
}


async def bodies(env, ids: list[str]) -> dict[str, tuple[str, int | None]]:
    wanted, found = set(ids), {}
    for topic in (ACCEPTED, ACCEPTED_BULK):
        def done(records, topic=topic) -> bool:
            for r in records:
                m = MessageAcceptedEvent.model_validate_json(r.value).payload
                if str(m.message_id) in wanted:
                    found[str(m.message_id)] = (m.body, m.template_version)
            return wanted <= set(found)

        await read_topic(env.bootstrap, topic.name(env.prefix), done, timeout_s=30)
    return found


async def test_send_by_template_single_batch_and_trigger(stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    await register_senders(pool, tenant.tenant_id, "Acme")  # the template's sender, verified
    # alphanumeric ids do not reach US handsets: the US message goes from a US long code with its 10DLC registration
    await register_senders(pool, tenant.tenant_id, US_LONG_CODE, registrations={"ten_dlc": {"brand_id": "B1", "campaign_id": "C1"}})
    marker = uuid.uuid4().hex[:10]
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=60) as api:
        r = await api.post("/v1/contacts", json={"phone": "+34600550001", "first_name": "Lucía", "language": "es"})
        assert r.status_code == 201, r.text
        r = await api.post("/v1/templates", json={**TEMPLATE, "name": f"shipped-{marker}"})
        assert r.status_code == 201, r.text
        tid = r.json()["template_id"]
        gone = (await api.post("/v1/templates", json={**TEMPLATE, "name": f"gone-{marker}"})).json()["template_id"]
        assert (await api.post(f"/v1/templates/{gone}/archive")).json()["archived"] is True

        single = await api.post("/v1/messages", json={"to": "+34600550001", "template_id": tid, "values": {"order": "A-1"},
                                                      "metadata": {"marker": marker}})
        assert single.status_code == 202, single.text
        batch = await api.post("/v1/messages/batch", json={"messages": [
            {"to": "+12025550188", "template_id": tid, "values": {"order": "A-2"}, "metadata": {"marker": marker},
             "sender": US_LONG_CODE},
            {"to": "+34600550002", "template_id": gone, "values": {"order": "A-3"}},
            {"to": "+34600550002", "template_id": tid},
        ]})
        assert batch.status_code == 202, batch.text
        assert [x.get("error", {}).get("code") for x in batch.json()["results"]] == [
            None, "template_archived", "template_variable_missing"]
        r = await api.post("/v1/messages", json={"to": "+34600550001", "template_id": gone, "values": {"order": "x"}})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "template_archived")

        # a new version: the next send uses it
        v2 = {**TEMPLATE, "name": f"shipped-{marker}",
              "variants": {**TEMPLATE["variants"], "es": "Hola {{first_name|}}: el pedido {{values.order}} va en camino"}}
        r = await api.put(f"/v1/templates/{tid}", json=v2)
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        after = await api.post("/v1/messages", json={"to": "+34600550001", "template_id": tid, "values": {"order": "A-4"},
                                                     "metadata": {"marker": marker}})
        assert after.status_code == 202, after.text

    def trigger(payload: dict) -> bytes:
        request = MessageRequest.model_validate({**payload, "metadata": {"marker": marker}})
        return TriggerEvent(tenant=tenant.tenant_id, payload=request).model_dump_json().encode()

    records = await signed(pool, tenant.tenant_id, [
        (marker.encode(), trigger({"to": "+34600550001", "template_id": tid, "values": {"order": "K-1"}})),
        (marker.encode(), trigger({"to": "+34600550003", "template_id": gone, "values": {"order": "K-2"}})),
        (marker.encode(), trigger({"to": "+34600550003", "template_id": str(uuid.uuid4()), "values": {"order": "K-3"}})),
        (marker.encode(), trigger({"to": "+34600550003", "template_id": tid})),
        # neither body nor template: refused by the contract
        (marker.encode(), b'{"type": "message.requested", "tenant": "%s", "payload": {"to": "+34600550003"}}'
         % tenant.tenant_id.encode()),
    ])
    await produce_raw(env.bootstrap, TRIGGERS.name(env.prefix), records)

    async def sent() -> list[str] | None:
        rows = await pool.fetch(
            "SELECT message_id::text AS id FROM messages WHERE tenant_id = $1 AND metadata->>'marker' = $2"
            " AND status = ANY($3::text[])", tenant.tenant_id, marker, FINAL_NAMES)
        return [r["id"] for r in rows] if len(rows) >= 4 else None

    final = await wait_for(sent, timeout_s=90)
    api_ids = [single.json()["message_id"], batch.json()["results"][0]["message_id"], after.json()["message_id"]]
    (kafka_id,) = set(final) - set(api_ids)
    assert set(api_ids) <= set(final)
    got = await bodies(env, [*api_ids, kafka_id])
    assert got[api_ids[0]] == ("Hola Lucía, tu pedido A-1 ha salido", 1)
    assert got[api_ids[1]] == ("Hi there, your order A-2 has shipped", 1)
    assert got[api_ids[2]] == ("Hola Lucía: el pedido A-4 va en camino", 2)
    assert got[kafka_id] == ("Hola Lucía: el pedido K-1 va en camino", 2)

    async with httpx.AsyncClient(base_url=stack.url("reports"), headers=tenant.headers, timeout=30) as reports:
        senders = ["Acme", US_LONG_CODE, "Acme", "Acme"]
        for mid, version, sender in zip([*api_ids, kafka_id], [1, 1, 2, 2], senders, strict=True):
            view = (await reports.get(f"/v1/messages/{mid}")).json()
            assert view["status"] in FINAL_NAMES, view
            assert (view["template_id"], view["template_version"], view["sender"]) == (tid, version, sender)
    refs = httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]
    assert all(refs.get(i) == 1 for i in [*api_ids, kafka_id]), "each reached the gateway once"

    rejected = await read_topic(
        env.bootstrap, REJECTED.name(env.prefix),
        lambda rs: len([e for e in rejected_events(rs) if e.payload.key == marker]) >= 4,
    )
    ours = [e.payload for e in rejected_events(rejected) if e.payload.key == marker]
    assert sorted(e.reason_code for e in ours) == [
        "schema_invalid", "template_archived", "template_not_found", "template_variable_missing"]
    (neither,) = [e for e in ours if e.reason_code == "schema_invalid"]
    assert [x["code"] for x in neither.errors] == ["template_or_body"]
