"""Lanes in processes of their own (HERALD_LANES, HERALD_NICE), on the real broker, database and
simulator: a dispatcher that runs only the campaign lane sends campaign messages and leaves
transactional ones to the instance that runs the main lane; the niced one runs at the lower
CPU priority."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.contracts import MessageOutbound, MessageOutboundEvent, utcnow
from shared.devtools.stack import Ports, Stack
from shared.statuses import MessageType
from shared.topics import OUTBOUND, OUTBOUND_BULK
from tests.helpers import produce_raw, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory) -> Iterator[Stack]:
    s = Stack(env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
                   "HERALD_SIM_RECEIPT_URL": "http://127.0.0.1:9/none"},
              ports=Ports.random(), log_dir=Path(tmp_path_factory.mktemp("lanes-logs")))
    s.start("simulator")
    s.start("dispatcher", extra_env={"HERALD_LANES": '["bulk"]', "HERALD_NICE": "10"})
    try:
        s.wait_ready(90)
        yield s
    finally:
        s.stop()


def messages(n: int, kind: MessageType) -> list[MessageOutbound]:
    now = utcnow()
    return [MessageOutbound(message_id=uuid.uuid4(), to=f"+3462{i:07d}", country="ES", body="lanes", type=kind,
                            encoding="GSM-7", segments=1, source="api", accepted_at=now, released_at=now)
            for i in range(n)]


async def publish(env, topic, items: list[MessageOutbound]) -> None:
    records = [(m.to.encode(), MessageOutboundEvent(tenant="acme", payload=m).model_dump_json().encode()) for m in items]
    await produce_raw(env.bootstrap, topic.name(env.prefix), records)


def sent(stack: Stack) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]


async def test_a_campaign_lane_instance_sends_only_campaign_messages(stack, env) -> None:
    [bulk_process] = [p for p in stack.processes if p.name == "dispatcher"]
    assert os.getpriority(os.PRIO_PROCESS, bulk_process.popen.pid) == 10
    campaign, otps = messages(20, MessageType.MARKETING), messages(5, MessageType.TRANSACTIONAL)
    await publish(env, OUTBOUND_BULK, campaign)
    await publish(env, OUTBOUND, otps)

    async def campaign_sent():
        got = sent(stack)
        return all(got.get(str(m.message_id)) == 1 for m in campaign) or None

    await wait_for(campaign_sent, timeout_s=60)
    got = sent(stack)
    assert not any(got.get(str(m.message_id)) for m in otps), "the main lane is not this instance's"

    main = stack.start("dispatcher", extra_env={"HERALD_LANES": '["main"]'})
    stack.wait_ready(90, [main])
    assert os.getpriority(os.PRIO_PROCESS, main.popen.pid) == 0

    async def otps_sent():
        got = sent(stack)
        return all(got.get(str(m.message_id)) == 1 for m in otps) or None

    await wait_for(otps_sent, timeout_s=60)
    got = sent(stack)
    assert all(got.get(str(m.message_id)) == 1 for m in campaign + otps), "each once"
