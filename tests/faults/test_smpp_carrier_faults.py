"""Carrier faults over SMPP, through every real component (ingest, scheduler, dispatcher with an
``smpp`` gateway, the simulator's SMPP face, Kafka, reports on PostgreSQL):

* an SMSC that restarts its message ids at 1: receipts carry ids that older messages already
  had, and each must still reach the message it belongs to;
* an SMSC that sends deliver_sm Herald cannot read while traffic flows: each is answered with
  an error on the same bind, and nothing in flight is lost.

In each, every accepted message ends in exactly one final status, the one the simulator drew
for it, and the gateway saw each message id at most once. A few thousand messages, short."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald_tools.demo import demo_numbers
from herald_tools.stack import Ports, Stack, free_port
from shared.statuses import FINAL
from tests.conftest import make_tenant
from tests.e2e.test_pipeline import all_final, send_batches
from tests.helpers import running

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]
FINAL_NAMES = [s.value for s in FINAL]
#: the simulator's drawn outcome -> the status Herald must show (REJECTD is "failed")
EXPECTED = {"delivered": "delivered", "undelivered": "undelivered", "failed": "failed"}


@pytest.fixture(scope="module")
def carrier(env, tmp_path_factory) -> Iterator[Stack]:
    smpp_port = free_port()
    gateways = [
        {"name": "smsc", "kind": "smpp", "host": "127.0.0.1", "port": smpp_port, "system_id": "herald",
         "password": "sim-pass", "binds": 2, "window": 20, "rate_per_s": 2000, "send_message_id_tlv": True,
         "reconnect_min_s": 0.2, "reconnect_max_s": 2}
    ]
    stack = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_GATEWAYS": json.dumps(gateways), "HERALD_SIM_SMPP_PORT": str(smpp_port),
             "HERALD_SIM_RECEIPT_DELAY_MIN_MS": "20", "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "300",
             "HERALD_SIM_SMPP_REDELIVER_MS": "300",
             # outcomes mixed enough that a receipt applied to the wrong message shows
             "HERALD_SIM_DELIVERED_RATE": "0.5", "HERALD_SIM_UNDELIVERED_RATE": "0.3", "HERALD_SIM_FAILED_RATE": "0.2"},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("carrier-logs")),
    )
    with running(stack):
        yield stack


def control(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.ports.simulator_control}"


def wave(run: str, count: int, seed: int) -> list[dict]:
    bodies = [f"{run} short", f"{run} long " + "text € " * 30]  # every fifth one in 2 parts
    return [
        {"to": n, "body": bodies[1] if i % 5 == 0 else f"{bodies[0]} {i}", "type": "transactional"}
        for i, n in enumerate(demo_numbers(count, seed=seed))
    ]


async def check_each_message(stack: Stack, pool, ids: list[str]) -> None:
    """One final status each, the simulator's drawn outcome; one receipt per part; sent once."""
    sim = httpx.get(f"{control(stack)}/stats/smpp/outcomes", timeout=30).json()["messages"]
    refs = httpx.get(f"{control(stack)}/stats/client_refs", timeout=30).json()["client_refs"]
    assert all(refs.get(i, 0) <= 1 for i in ids), "the gateway got a message twice"
    assert all(len(sim.get(i, [])) == 1 for i in ids), "a message never reached the gateway"
    rows = await pool.fetch(
        "SELECT m.message_id::text AS id, m.status, m.part_ids,"
        " (SELECT count(*) FROM message_events e WHERE e.message_id = m.message_id AND e.status = ANY($2::text[])) AS finals,"
        " (SELECT array_agg(e.detail->>'gateway_message_id') FROM message_events e"
        "   WHERE e.message_id = m.message_id AND e.detail ? 'receipt') AS receipt_ids"
        " FROM messages m WHERE m.message_id = ANY($1::uuid[])",
        ids, FINAL_NAMES,
    )
    assert len(rows) == len(ids)
    wrong = []
    for r in rows:
        (seen,) = sim[r["id"]]
        outcome = seen["outcomes"][0]
        receipt_ids = sorted(r["receipt_ids"] or [])
        if (r["status"], r["finals"], receipt_ids) != (EXPECTED[outcome], 1, sorted(seen["ids"])):
            wrong.append((r["id"], r["status"], outcome, r["finals"], receipt_ids, seen["ids"]))
    assert not wrong, f"{len(wrong)} of {len(ids)} messages with the wrong receipts, e.g. {wrong[:3]}"


async def test_an_smsc_that_restarts_its_ids(carrier: Stack, pool) -> None:
    tenant = await make_tenant(pool)
    ids: list[str] = []
    for n in range(3):
        # ids 1, 2, 3, ... again: every receipt of this wave carries an id an older message had
        httpx.post(f"{control(carrier)}/control/smpp/restart-ids", timeout=10).raise_for_status()
        sent = await send_batches(carrier, tenant, wave(f"restart{n}", 600, seed=40 + n))
        assert len(sent) == 600
        try:
            statuses = await all_final(pool, sent, timeout_s=90)
        except AssertionError:
            rows = await pool.fetch("SELECT status, count(*) AS n FROM messages WHERE message_id = ANY($1::uuid[])"
                                    " GROUP BY status", sent)
            raise AssertionError(f"wave {n}: not every message final: {dict((r['status'], r['n']) for r in rows)}") from None
        assert Counter(statuses.values())["delivered"] > 0
        ids += sent
    assert httpx.get(f"{control(carrier)}/stats", timeout=10).json()["smpp"]["id_restarts"] >= 3
    reused = await pool.fetchval(
        "SELECT count(*) FROM (SELECT gateway_message_id FROM gateway_refs WHERE gateway = 'smsc'"
        " AND message_id = ANY($1::uuid[]) GROUP BY gateway_message_id HAVING count(*) = 3) x", ids
    )
    assert reused >= 600  # each id of the first wave came back twice
    await check_each_message(carrier, pool, ids)


async def test_an_smsc_sending_malformed_deliver_sm(carrier: Stack, pool) -> None:
    from services.simulator.smpp import MALFORMED

    tenant = await make_tenant(pool)
    before = httpx.get(f"{control(carrier)}/stats", timeout=10).json()["smpp"]
    for kind in MALFORMED:
        httpx.post(f"{control(carrier)}/control/smpp/malformed", json={"kind": kind, "count": 20}, timeout=10).raise_for_status()
    ids = await send_batches(carrier, tenant, wave("malformed", 1500, seed=77))
    for kind in MALFORMED:  # and more while receipts flow back
        httpx.post(f"{control(carrier)}/control/smpp/malformed", json={"kind": kind, "count": 20}, timeout=10).raise_for_status()
    assert len(ids) == 1500
    await all_final(pool, ids, timeout_s=120)
    await check_each_message(carrier, pool, ids)
    after = httpx.get(f"{control(carrier)}/stats", timeout=10).json()["smpp"]
    want = 40 * len(MALFORMED)
    answered = {k: v - before["malformed_answers"].get(k, 0) for k, v in after["malformed_answers"].items()}
    assert answered == {"0x00000065": want}  # ESME_RX_P_APPN each, none left unanswered
    assert after["binds"] == before["binds"], "a bind dropped"
    assert after["malformed_retried"] == before["malformed_retried"]
