"""The whole pipeline over SMPP: ingest -> scheduler -> dispatcher with an ``smpp`` gateway ->
the simulator's SMPP face -> receipts as deliver_sm -> the dispatcher's Kafka sink -> reports.
Every message reaches one final state, long ones included, and none is sent twice."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald_tools.demo import demo_numbers
from herald_tools.stack import Ports, Stack, free_port
from tests.conftest import make_tenant
from tests.e2e.test_pipeline import all_final, send_batches
from tests.helpers import running

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smpp_stack(env, tmp_path_factory) -> Iterator[Stack]:
    smpp_port = free_port()
    gateways = [
        {"name": "smsc", "kind": "smpp", "host": "127.0.0.1", "port": smpp_port, "system_id": "herald",
         "password": "sim-pass", "binds": 2, "window": 20, "rate_per_s": 2000, "send_message_id_tlv": True,
         "reconnect_min_s": 0.2, "reconnect_max_s": 2}
    ]
    stack = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_GATEWAYS": json.dumps(gateways), "HERALD_SIM_SMPP_PORT": str(smpp_port),
             "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200"},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("smpp-logs")),
    )
    with running(stack):
        yield stack


async def test_messages_over_smpp_reach_one_final_state_each(smpp_stack: Stack, pool) -> None:
    tenant = await make_tenant(pool)
    numbers = demo_numbers(300, seed=7)
    bodies = ["Short hello from Herald", "Long GSM-7 " + "text € " * 40, "Long UCS-2 😀 " + "Привет " * 30]
    messages = [{"to": n, "body": bodies[i % 3], "type": "transactional"} for i, n in enumerate(numbers)]
    ids = await send_batches(smpp_stack, tenant, messages)
    assert len(ids) == 300
    statuses = await all_final(pool, ids)
    counts = Counter(statuses.values())
    assert counts["delivered"] > 0 and counts["delivered"] + counts["undelivered"] + counts["failed"] == 300

    control = f"http://127.0.0.1:{smpp_stack.ports.simulator_control}"
    refs = httpx.get(f"{control}/stats/client_refs").json()["client_refs"]
    assert {i: refs.get(i) for i in ids} == {i: 1 for i in ids}  # each message once, all its parts
    stats = httpx.get(f"{control}/stats").json()
    assert stats["smpp"]["duplicate_parts"] == 0 and stats["smpp"]["incomplete_messages"] == 0
    assert stats["smpp"]["parts"] > 300  # long ones went as concatenated parts

    # Each long message's status event carries all its part ids.
    rows = await pool.fetch(
        "SELECT message_id::text AS id, gateway_message_id FROM messages WHERE message_id = ANY($1::uuid[])", ids
    )
    assert all(r["gateway_message_id"] and r["gateway_message_id"].startswith("smpp-") for r in rows)


async def test_mo_over_smpp_lands_on_the_inbound_topic(smpp_stack: Stack, env) -> None:
    import uuid

    from shared.contracts import InboundMessageEvent
    from shared.topics import INBOUND
    from tests.helpers import read_topic

    marker = uuid.uuid4().hex[:8]
    text = f"STOP {marker} " + "¿Por qué? " * 20  # long: concatenated parts, reassembled
    r = httpx.post(f"http://127.0.0.1:{smpp_stack.ports.simulator_control}/control/mo",
                   json={"from": "+34600111222", "to": "12345", "text": text})
    r.raise_for_status()
    records = await read_topic(env.bootstrap, INBOUND.name(env.prefix), lambda rs: any(marker.encode() in r.value for r in rs))
    mine = [InboundMessageEvent.model_validate_json(r.value) for r in records if marker.encode() in r.value]
    assert len(mine) == 1
    assert (mine[0].payload.sender, mine[0].payload.recipient, mine[0].payload.body) == ("+34600111222", "12345", text)
    assert mine[0].payload.gateway == "smsc"
