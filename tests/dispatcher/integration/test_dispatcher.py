"""The dispatcher's exactly-once machinery against real PostgreSQL and a real simulator process:
redelivered batches are not resent, stale claims are resolved by asking the gateway first,
and a submission whose answer was lost is never blindly repeated."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from herald_tools.stack import Ports, Stack
from services.dispatcher.gateways import build_gateway
from services.dispatcher.gateways.herald_http import HeraldHttpConfig
from services.dispatcher.handlers import OutboundHandler, Reconciler, Sender
from services.dispatcher.repository import ClaimRepository, TenantStates
from services.dispatcher.settings import DispatcherSettings, RouteConfig
from shared.contracts import MessageAcceptedEvent, MessageOutbound, MessageOutboundEvent, MessageStatusEvent, utcnow
from shared.db import create_pool
from shared.kafka import Incoming, Outgoing, is_transient
from shared.settings import ServiceSettings
from shared.statuses import Status
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def simulator(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(env={}, ports=Ports.random(), log_dir=tmp_path_factory.mktemp("sim"))
    stack.start("simulator", extra_env={"HERALD_SIM_RECEIPT_URL": "http://127.0.0.1:9/none"})
    stack.wait_ready(30)
    yield stack
    stack.stop()


class ListPublisher:
    def __init__(self) -> None:
        self.items: list[Outgoing] = []

    async def publish(self, items: list[Outgoing]) -> None:
        self.items.extend(items)


def settings_for(simulator: Stack, **overrides) -> DispatcherSettings:
    gateway = HeraldHttpConfig(name="sim", url=simulator.url("simulator"), api_token=SecretStr("sim-token"),
                            rate_per_s=5000, timeout_s=overrides.pop("timeout_s", 5.0))
    overrides.setdefault("instance_id", "test")
    return DispatcherSettings(gateways=[gateway], retry_base_s=0.05, retry_cap_s=0.2, **overrides)


def outbound(n: int) -> list[Incoming]:
    items = []
    for i in range(n):
        message = MessageOutbound(
            message_id=uuid.uuid4(), to=f"+3460{i:07d}", country="ES", body="hi", type="transactional",
            encoding="GSM-7", segments=1, source="api", accepted_at=utcnow(), released_at=utcnow(),
        )
        items.append(Incoming(None, MessageOutboundEvent(tenant="acme", payload=message), None))  # type: ignore[arg-type]
    return items


def sim_counts(simulator: Stack) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{simulator.ports.simulator_control}/stats/client_refs").json()["client_refs"]


def control(simulator: Stack, body: dict) -> None:
    httpx.post(f"http://127.0.0.1:{simulator.ports.simulator_control}/control", json=body, timeout=60).raise_for_status()


async def only_these_are_stale(pool, ids: list) -> None:
    """The session database may hold other tests' claims: keep the reconciler on ours."""
    await pool.execute(
        "UPDATE dispatch_claims SET lease_until = now() + interval '1 hour'"
        " WHERE state = 'claimed' AND message_id <> ALL($1::uuid[])",
        ids,
    )
    await pool.execute(
        "UPDATE dispatch_claims SET lease_until = now() - interval '1 second' WHERE message_id = ANY($1::uuid[])", ids
    )


async def test_the_validity_left_reaches_the_gateway_as_validity_s(pool, simulator) -> None:
    """Through the dispatcher to the simulator's HTTP face: a message with validity carries the
    seconds it has left when submitted (not its original validity); one without carries none."""
    settings = settings_for(simulator)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings)
    batch = outbound(2)
    otp = batch[0].event.payload
    batch[0] = Incoming(None, MessageOutboundEvent(tenant="acme", payload=otp.model_copy(update={
        "accepted_at": utcnow() - timedelta(seconds=60), "expires_at": utcnow() + timedelta(seconds=240)})), None)
    await handler(batch)
    await gateways["sim"].close()

    def recorded(ref: str) -> dict:
        r = httpx.get(f"http://127.0.0.1:{simulator.ports.simulator_control}/stats/submissions", params={"client_ref": ref})
        (only,) = r.json()["messages"]
        return only

    assert 225 <= recorded(str(otp.message_id))["validity_s"] <= 239
    assert "validity_s" not in recorded(str(batch[1].event.payload.message_id))


async def test_redelivered_batch_is_not_sent_again(pool, simulator) -> None:
    settings = settings_for(simulator)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings)
    batch = outbound(120)
    first = await handler(batch)
    second = await handler(batch)  # Kafka delivers the same records again
    await gateways["sim"].close()
    counts = sim_counts(simulator)
    ids = [str(i.event.payload.message_id) for i in batch]
    assert [counts.get(i) for i in ids] == [1] * 120
    assert {o.event.event_id for o in first} == {o.event.event_id for o in second}  # same facts, same event ids
    assert all(isinstance(o.event, MessageStatusEvent) and o.event.payload.status is Status.SUBMITTED for o in first)


async def test_a_disabled_tenants_messages_go_back_to_the_scheduler_unsent(pool, simulator) -> None:
    hostile, other = (f"t{uuid.uuid4().hex[:8]}" for _ in range(2))
    await pool.execute("INSERT INTO tenants (tenant_id, name, disabled_at) VALUES ($1, $1, now()), ($2, $2, NULL)",
                       hostile, other)
    settings = settings_for(simulator)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings, tenants=TenantStates(pool))
    batch = [Incoming(None, i.event.model_copy(update={"tenant": hostile if n % 2 else other}), None)  # type: ignore[arg-type]
             for n, i in enumerate(outbound(6))]
    out = await handler(batch)
    await gateways["sim"].close()
    counts = sim_counts(simulator)
    theirs = {i.event.payload.message_id for i in batch if i.event.tenant == hostile}
    ours = {i.event.payload.message_id for i in batch if i.event.tenant == other}
    assert {o.event.payload.message_id for o in out if isinstance(o.event, MessageAcceptedEvent)} == theirs
    assert {o.event.payload.message_id for o in out if isinstance(o.event, MessageStatusEvent)} == ours
    assert not any(str(m) in counts for m in theirs) and all(counts.get(str(m)) == 1 for m in ours)
    assert await pool.fetchval("SELECT count(*) FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", list(theirs)) == 0


async def test_stale_claims_are_resolved_by_asking_the_gateway(pool, simulator) -> None:
    settings = settings_for(simulator, claim_lease_s=30)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    claims = ClaimRepository(pool)
    batch = outbound(2)
    got, lost = (i.event.payload for i in batch)
    # A dispatcher claimed both, recorded its attempt on the first, submitted it, and died before
    # recording the outcome; the second it never got to.
    await claims.claim("dead-instance", 30, [(m.message_id, "acme", m.model_dump_json()) for m in (got, lost)])
    await claims.record_attempts("sim", [got.message_id])
    await only_these_are_stale(pool, [got.message_id, lost.message_id])
    r = httpx.post(f"{simulator.url('simulator')}/v1/sms", headers={"Authorization": "Bearer sim-token"},
                   json={"to": got.to, "body": got.body, "client_ref": str(got.message_id)})
    gateway_id = r.json()["id"]
    publisher = ListPublisher()
    reconciler = Reconciler(claims, Sender(gateways, settings), publisher, settings)  # type: ignore[arg-type]
    assert await reconciler.reconcile_once() == 2
    await gateways["sim"].close()
    counts = sim_counts(simulator)
    assert counts[str(got.message_id)] == 1 and counts[str(lost.message_id)] == 1
    by_id = {o.event.payload.message_id: o.event.payload for o in publisher.items}
    assert by_id[got.message_id].gateway_message_id == gateway_id
    assert by_id[lost.message_id].status is Status.SUBMITTED
    rows = await pool.fetch("SELECT state FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", [got.message_id, lost.message_id])
    assert {r["state"] for r in rows} == {"submitted"}


async def test_lost_answer_is_looked_up_not_resent(pool, simulator) -> None:
    settings = settings_for(simulator, timeout_s=0.5)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    claims = ClaimRepository(pool)
    handler = OutboundHandler(claims, Sender(gateways, settings), settings)
    batch = outbound(3)
    control(simulator, {"mode": "slow", "delay_ms": 1500})  # the gateway gets them but answers too late
    try:
        out = await handler(batch)
    finally:
        control(simulator, {"mode": "normal"})
    assert out == []  # nothing is known yet: no status, no resend
    ids = [i.event.payload.message_id for i in batch]
    await only_these_are_stale(pool, ids)
    publisher = ListPublisher()
    await Reconciler(claims, Sender(gateways, settings), publisher, settings).reconcile_once()  # type: ignore[arg-type]
    await gateways["sim"].close()
    counts = sim_counts(simulator)
    assert [counts.get(str(i)) for i in ids] == [1, 1, 1]
    assert sorted(o.event.payload.message_id for o in publisher.items) == sorted(ids)


async def test_permanent_refusal_fails_with_the_gateway_reason(pool, simulator) -> None:
    settings = settings_for(simulator)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings)
    control(simulator, {"mode": "fail", "status": 400})
    try:
        out = await handler(outbound(2))
    finally:
        control(simulator, {"mode": "normal"})
        await gateways["sim"].close()
    assert [o.event.payload.status for o in out] == [Status.FAILED, Status.FAILED]
    assert all(o.event.payload.reason_code not in (None, "retries_exhausted") for o in out)


async def test_transient_refusals_give_up_after_the_attempt_limit(pool, simulator) -> None:
    settings = settings_for(simulator, retry_max_attempts=3)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings)
    control(simulator, {"mode": "fail", "status": 503})
    try:
        out = await handler(outbound(1))
    finally:
        control(simulator, {"mode": "normal"})
        await gateways["sim"].close()
    status = out[0].event.payload
    assert (status.status, status.reason_code, status.attempts) == (Status.FAILED, "retries_exhausted", 3)


async def test_live_instances_renew_their_leases_and_dead_ones_expire(pool, simulator) -> None:
    claims = ClaimRepository(pool)
    alive, dead = outbound(2)
    for owner, item in (("alive", alive), ("dead", dead)):
        m = item.event.payload
        await claims.claim(owner, 3, [(m.message_id, "acme", m.model_dump_json())])
    await claims.release_for_reconcile([], 1)
    working_on = [alive.event.payload.message_id]
    assert await claims.renew("alive", 3, working_on) == 1
    assert await claims.renew("alive", 3, [dead.event.payload.message_id]) == 0  # not its claim

    await asyncio.sleep(2)
    assert await claims.renew("alive", 3, working_on) == 1  # renewed in time: still its own
    await asyncio.sleep(1.5)
    ours = [alive.event.payload.message_id, dead.event.payload.message_id]
    await pool.execute(  # other tests' claims are not this test's business
        "UPDATE dispatch_claims SET lease_until = now() + interval '1 hour'"
        " WHERE state = 'claimed' AND message_id <> ALL($1::uuid[])",
        ours,
    )
    stale = await claims.take_stale("reconciler-test", 30, 10)
    ids = {r["message_id"] for r in stale}
    assert dead.event.payload.message_id in ids and alive.event.payload.message_id not in ids


class PgLink:
    """A TCP relay between a dispatcher's pool and PostgreSQL that a test can cut: a real network
    fault (open connections reset, new ones refused) for this pool only, not the session's."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.up = False
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


@contextlib.asynccontextmanager
async def linked_pool(env) -> AsyncIterator[tuple[asyncpg.Pool, PgLink]]:
    """A dispatcher pool reaching PostgreSQL through a link the test can cut."""
    dsn = env.dsn
    port = int(dsn.rsplit(":", 1)[1].split("/", 1)[0])
    link = PgLink(port)
    await link.start()
    linked = dsn.replace(f":{port}/", f":{link.port}/")
    pool = await create_pool(ServiceSettings(database_url=linked, db_pool_min=1, db_pool_max=4))
    try:
        yield pool, link
    finally:
        link.cut()
        pool.terminate()
        await link.close()


@contextlib.asynccontextmanager
async def running(reconciler: Reconciler) -> AsyncIterator[None]:
    """The reconciler loop of one dispatcher process (renews that process's leases, resolves stale claims)."""
    task = asyncio.create_task(reconciler.run())
    try:
        yield
    finally:
        reconciler.stop()
        await asyncio.wait_for(task, 30)


def final_statuses(items: list[Outgoing]) -> dict[uuid.UUID, set[uuid.UUID]]:
    """message id → the distinct status event ids published for it (the same fact twice has one id)."""
    by_id: dict[uuid.UUID, set[uuid.UUID]] = {}
    for o in items:
        by_id.setdefault(o.event.payload.message_id, set()).add(o.event.event_id)
    return by_id


async def keep_other_claims_out(pool, ids: list) -> None:
    """The session database may hold other tests' claims: keep this test's reconcilers on ours."""
    await pool.execute(
        "UPDATE dispatch_claims SET lease_until = now() + interval '1 hour'"
        " WHERE state = 'claimed' AND message_id <> ALL($1::uuid[])",
        ids,
    )


async def fail_batch_while_sending(pool, simulator, handler: OutboundHandler, link: PgLink, batch: list[Incoming]) -> None:
    """The handler claims the batch and submits (slowly); the database goes away while the
    submissions are in flight, so the batch fails after claiming."""
    ids = [i.event.payload.message_id for i in batch]
    control(simulator, {"mode": "slow", "delay_ms": 1500})
    task = asyncio.create_task(handler(batch))
    try:
        async def claimed():
            n = await pool.fetchval("SELECT count(*) FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", ids)
            return n == len(ids) or None

        await wait_for(claimed, timeout_s=20, interval_s=0.05)
        await asyncio.sleep(0.3)  # the submissions are on their way
        link.cut()
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(task, 30)
        assert is_transient(failed.value), repr(failed.value)
    finally:
        control(simulator, {"mode": "normal"})
    await asyncio.sleep(2)  # the slow answers are in: the gateway has every message once
    link.restore()



async def wait_resolved(out: list, publisher: ListPublisher, ids: list) -> None:
    """Until every message has a status, published by the handler or the reconciler (or 30 s)."""

    async def all_resolved():
        return len(final_statuses(out + publisher.items)) == len(ids) or None

    try:
        await wait_for(all_resolved, timeout_s=30, interval_s=0.5)
    except AssertionError:
        pass  # the assertions that follow say what is missing


def check_each_settled_once_and_sent_once(published: list, ids: list, simulator) -> None:
    statuses = final_statuses(published)
    assert sorted(statuses) == sorted(ids), f"statuses for {len(statuses)} of {len(ids)} messages"
    assert all(len(s) == 1 for s in statuses.values())
    counts = sim_counts(simulator)
    assert [counts.get(str(i)) for i in ids] == [1] * len(ids)

async def test_batch_failing_after_claiming_is_retried_and_every_message_ends_once(env, pool, simulator) -> None:
    """The consumer retries a failed batch in the same process: claims it left open go to the
    reconciler (not skipped, not renewed for ever) and every message gets one status."""
    batch = outbound(40)
    ids = [i.event.payload.message_id for i in batch]
    async with linked_pool(env) as (dpool, link):
        settings = settings_for(simulator, instance_id="dispatcher-1", claim_lease_s=6, reconcile_interval_s=0.5)
        gateways = {"sim": build_gateway(settings.gateways[0])}
        claims = ClaimRepository(dpool)
        sender = Sender(gateways, settings)
        handler = OutboundHandler(claims, sender, settings)
        publisher = ListPublisher()
        reconciler = Reconciler(claims, sender, publisher, settings)  # type: ignore[arg-type]
        await keep_other_claims_out(pool, ids)
        async with running(reconciler):
            await fail_batch_while_sending(pool, simulator, handler, link, batch)
            out = await handler(batch)  # the consumer retries the batch
            await wait_resolved(out, publisher, ids)
        await gateways["sim"].close()
    check_each_settled_once_and_sent_once(out + publisher.items, ids, simulator)
    rows = await pool.fetch("SELECT state FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", ids)
    assert {r["state"] for r in rows} == {"submitted"}


async def test_restart_with_the_same_instance_id_does_not_strand_claims(env, pool, simulator) -> None:
    """A dispatcher restarts under the same name (<host>-1 in a container, the pod name): the new
    process neither renews nor skips for ever the claims the old one left; the reconciler takes them."""
    batch = outbound(40)
    ids = [i.event.payload.message_id for i in batch]
    publisher = ListPublisher()
    await keep_other_claims_out(pool, ids)
    async with linked_pool(env) as (dpool, link):
        settings = settings_for(simulator, instance_id="dispatcher-1", claim_lease_s=6, reconcile_interval_s=0.5)
        gateways = {"sim": build_gateway(settings.gateways[0])}
        claims = ClaimRepository(dpool)
        sender = Sender(gateways, settings)
        async with running(Reconciler(claims, sender, publisher, settings)):  # type: ignore[arg-type]
            await fail_batch_while_sending(pool, simulator, OutboundHandler(claims, sender, settings), link, batch)
        await gateways["sim"].close()
    # The process is gone; a new one starts with the same instance id and gets the batch again.
    settings = settings_for(simulator, instance_id="dispatcher-1", claim_lease_s=6, reconcile_interval_s=0.5)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    claims = ClaimRepository(pool)
    sender = Sender(gateways, settings)
    async with running(Reconciler(claims, sender, publisher, settings)):  # type: ignore[arg-type]
        out = await OutboundHandler(claims, sender, settings)(batch)
        await wait_resolved(out, publisher, ids)
    await gateways["sim"].close()
    check_each_settled_once_and_sent_once(out + publisher.items, ids, simulator)


@pytest.fixture(scope="module")
def simulator_b(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(env={}, ports=Ports.random(), log_dir=tmp_path_factory.mktemp("sim-b"))
    stack.start("simulator", extra_env={"HERALD_SIM_RECEIPT_URL": "http://127.0.0.1:9/none"})
    stack.wait_ready(30)
    yield stack
    stack.stop()


async def test_reconciler_asks_the_gateway_that_timed_out_not_the_one_health_prefers(pool, simulator, simulator_b) -> None:
    """Gateway a times out until its breaker opens; the route now prefers b. The reconciler must ask
    a (which got the messages), not resend them to b because b never saw them."""
    a = HeraldHttpConfig(name="a", url=simulator.url("simulator"), api_token=SecretStr("sim-token"), rate_per_s=5000,
                         timeout_s=0.5)
    b = HeraldHttpConfig(name="b", url=simulator_b.url("simulator"), api_token=SecretStr("sim-token"), rate_per_s=5000)
    settings = DispatcherSettings(gateways=[a, b], routes=[RouteConfig(name="es", gateways=["a", "b"])],
                                  instance_id="test", retry_base_s=0.05, retry_cap_s=0.2, failover_min_samples=3)
    gateways = {g.name: build_gateway(g) for g in (a, b)}
    claims = ClaimRepository(pool)
    sender = Sender(gateways, settings)
    batch = outbound(5)
    ids = [i.event.payload.message_id for i in batch]
    control(simulator, {"mode": "slow", "delay_ms": 1500})
    try:
        out = await OutboundHandler(claims, sender, settings)(batch)
    finally:
        control(simulator, {"mode": "normal"})
    assert out == []  # a timed out: outcome unknown
    assert not sender.available("a") and sender.route(batch[0].event.payload) == "b"  # a's breaker is open
    await asyncio.sleep(2)  # a has answered by now
    await only_these_are_stale(pool, ids)
    publisher = ListPublisher()
    await Reconciler(claims, sender, publisher, settings).reconcile_once()  # type: ignore[arg-type]
    for g in gateways.values():
        await g.close()
    on_a, on_b = sim_counts(simulator), sim_counts(simulator_b)
    assert [on_a.get(str(i), 0) + on_b.get(str(i), 0) for i in ids] == [1] * len(ids), "sent to a and b"
    by_id = {o.event.payload.message_id: o.event.payload for o in publisher.items}
    assert sorted(by_id) == sorted(ids) and {p.gateway for p in by_id.values()} == {"a"}
    # Each claim records the one attempt, on a, made before it was sent.
    rows = await pool.fetch("SELECT submit_attempts FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", ids)
    assert all([x["gateway"] for x in r["submit_attempts"]] == ["a"] for r in rows)


# --- What a batch learned from the gateway is kept through a database hiccup ---------------------


class FlakyClaims(ClaimRepository):
    """The real repository, but ``record_outcomes`` and ``finish`` first fail as PostgreSQL does when
    it picks a transaction as a deadlock's victim (a transient error: the same statement succeeds
    when run again)."""

    def __init__(self, pool, failures: int) -> None:
        super().__init__(pool)
        self.failures = {"record_outcomes": failures, "finish": failures}

    async def _maybe_fail(self, what: str) -> None:
        if self.failures[what] > 0:
            self.failures[what] -= 1
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")

    async def record_outcomes(self, gateway, ids, outcomes) -> None:
        await self._maybe_fail("record_outcomes")
        await super().record_outcomes(gateway, ids, outcomes)

    async def finish(self, finishes) -> None:
        await self._maybe_fail("finish")
        await super().finish(finishes)


async def test_a_deadlock_after_the_gateway_took_the_batch_does_not_lose_its_answers(pool, simulator) -> None:
    """A CI benchmark lost 500 SMPP submissions this way: the batch was submitted, writing the
    outcomes hit a deadlock, the batch failed and the gateway's message ids went with it, so the
    messages ended ``unknown`` and their receipts never matched. The answers in hand are written
    again instead: every message ends submitted with its gateway id, sent once."""
    settings = settings_for(simulator)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(FlakyClaims(pool, failures=2), Sender(gateways, settings), settings)
    batch = outbound(50)
    ids = [i.event.payload.message_id for i in batch]
    out = await handler(batch)
    await gateways["sim"].close()
    assert sorted(o.event.payload.message_id for o in out) == sorted(ids)
    assert all(o.event.payload.status is Status.SUBMITTED and o.event.payload.gateway_message_id for o in out)
    rows = await pool.fetch("SELECT state, gateway_message_id FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", ids)
    assert len(rows) == 50 and all(r["state"] == "submitted" and r["gateway_message_id"] for r in rows)
    counts = sim_counts(simulator)
    assert [counts.get(str(i)) for i in ids] == [1] * 50


async def test_lease_renewal_never_waits_for_a_claim_the_batch_is_writing(pool) -> None:
    """Renewal runs beside the batch on another connection. Waiting for a row the batch has locked
    (while the batch waits for one renewal locked) is the deadlock above: renewal skips what is
    locked now and renews it on its next round."""
    repo = ClaimRepository(pool)
    mid = uuid.uuid4()
    await repo.claim("renewer", 30, [(mid, "acme", "{}")])
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM dispatch_claims WHERE message_id = $1 FOR UPDATE", mid)
        renewed = await asyncio.wait_for(repo.renew("renewer", 30, [mid]), 3)
    assert renewed == 0
    assert await repo.renew("renewer", 30, [mid]) == 1
