"""Lanes in processes of their own (HERALD_LANES, HERALD_NICE), on the real broker, database and
simulator: a dispatcher that runs only the campaign lane sends campaign messages and leaves
transactional ones to the instance that runs the main lane; the niced one runs at the lower
CPU priority. An ingest with no lane (HERALD_LANES=[], ingest-bulk on Kubernetes) serves its API
and joins none of ingest's consumer groups."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald_tools.stack import Ports, Stack
from shared.contracts import MessageOutbound, MessageOutboundEvent, utcnow
from shared.statuses import MessageType
from shared.topics import CONTACT_EVENTS_IN, INBOUND, OUTBOUND, OUTBOUND_BULK, TRIGGERS
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


def assigned(process) -> dict[str, float]:
    """herald_consumer_assigned_partitions of a process, by topic suffix (its /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{process.ops_port}/metrics", timeout=30).text
    found = re.findall(r'^herald_consumer_assigned_partitions\{service="ingest",topic="([^"]+)"\} (\S+)$', text, re.M)
    return {topic: float(value) for topic, value in found}


async def partitions(env, topics) -> dict[str, int]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap)
    await producer.start()
    try:
        return {t.suffix: len(await producer.partitions_for(t.name(env.prefix))) for t in topics}
    finally:
        await producer.stop()


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


async def test_an_ingest_with_no_lane_serves_its_api_and_consumes_nothing(stack, env) -> None:
    counts = await partitions(env, [TRIGGERS, INBOUND, CONTACT_EVENTS_IN])
    assert all(counts.values()), counts
    bare = stack.start("ingest", extra_env={"HERALD_LANES": "[]", "HERALD_NICE": "10"})
    stack.wait_ready(90, [bare])
    assert httpx.get(f"http://127.0.0.1:{bare.port}/v1/campaigns", timeout=30).status_code == 401, "its API answers"
    # An ingest with every lane, started after it, gets every partition of ingest's three topics:
    # none is left to the bare one (which would have joined the groups first).
    full = stack.start("ingest")
    stack.wait_ready(90, [full])

    async def full_owns_all():
        got = assigned(full)
        return got if all(got.get(topic) == n for topic, n in counts.items()) else None

    await wait_for(full_owns_all, timeout_s=90)
    assert not any(assigned(bare).values()), "the bare ingest owns no partition"
