"""Short-link safety through the real services (Kafka, PostgreSQL, the simulator): a link answers
only once its message was submitted to a gateway, a suppressed message's link never does, a link
expires, an operator takes links down (`herald admin link takedown`), and a tenant's own link
domain is the only host its links answer on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Ports, Stack, free_port
from services.ingest.links import CODE_PATTERN
from shared.contracts import utcnow
from tests.conftest import make_tenant
from tests.e2e.test_pipeline import all_final, scrape, send_batches
from tests.helpers import running, wait_for

pytestmark = pytest.mark.e2e

DOMAIN = "go.herald.test"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"


@pytest.fixture(scope="module")
def links_stack(env, tmp_path_factory) -> Iterator[Stack]:
    smpp_port = free_port()  # over SMPP: the simulator keeps the texts it got (/stats/smpp/messages)
    gateways = [
        {"name": "smsc", "kind": "smpp", "host": "127.0.0.1", "port": smpp_port, "system_id": "herald",
         "password": "sim-pass", "binds": 1, "window": 20, "rate_per_s": 2000, "send_message_id_tlv": True,
         "reconnect_min_s": 0.2, "reconnect_max_s": 2}
    ]
    stack = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_GATEWAYS": json.dumps(gateways), "HERALD_SIM_SMPP_PORT": str(smpp_port),
             "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200", "HERALD_LINK_DOMAIN": DOMAIN,
             "HERALD_LINK_CACHE_TTL_S": "1"},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("links-logs")),
    )
    with running(stack):
        yield stack


def numbers(count: int, seed: int) -> list[str]:
    """Numbers in countries whose quiet hours let marketing go out now (so every message is sent)."""
    return demo_numbers(count, seed=seed, countries=marketing_countries(True))


async def codes_of(pool, message_id: str) -> list[str]:
    rows = await pool.fetch("SELECT code FROM links WHERE message_id = $1::uuid ORDER BY link_index", message_id)
    return [r["code"] for r in rows]


async def follow(stack: Stack, code: str, host: str | None = None) -> httpx.Response:
    headers = {"user-agent": IPHONE, **({"host": host} if host else {})}
    async with httpx.AsyncClient(base_url=stack.url("ingest"), timeout=10) as client:
        return await client.get(f"/l/{code}", headers=headers)


async def answers(stack: Stack, code: str, status: int, host: str | None = None, timeout_s: float = 30) -> httpx.Response:
    async def check():
        r = await follow(stack, code, host)
        return r if r.status_code == status else None

    return await wait_for(check, timeout_s=timeout_s, interval_s=0.3)


def error_code(r: httpx.Response) -> tuple[int, str | None]:
    """The status and error code of an answer (a redirect: its Location instead)."""
    if r.headers.get("content-type", "").startswith("application/json"):
        return r.status_code, r.json()["error"]["code"]
    return r.status_code, r.headers.get("location")


def refused(stack: Stack) -> dict[str, float]:
    return {dict(labels)["reason"]: value for (name, labels), value in scrape(f"{stack.ops_url('ingest')}/metrics").items()
            if name == "herald_link_redirects_refused_total"}


async def test_a_link_answers_only_once_its_message_was_submitted(links_stack: Stack, pool) -> None:
    to = numbers(1, seed=901)
    tenant = await make_tenant(pool)
    later = (utcnow() + timedelta(days=1)).isoformat()
    (held,) = await send_batches(links_stack, tenant, [
        {"to": to[0], "body": "Sale https://shop.example.com/held STOP to opt out", "type": "marketing",
         "send_at": later}])
    (code,) = await codes_of(pool, held)
    assert CODE_PATTERN.match(code)
    await wait_for(lambda: pool.fetchval("SELECT status = 'scheduled' FROM messages WHERE message_id = $1::uuid", held),
                   timeout_s=60)
    # accepted and stored, held by the scheduler: not submitted, so it does not redirect (as an unknown code)
    r = await follow(links_stack, code)
    assert error_code(r) == (404, "link_not_found"), r.text
    assert r.json() == (await follow(links_stack, "ZZZZZZZZZZ")).json()  # nothing tells it exists
    assert refused(links_stack).get("not_active", 0) >= 1

    async with httpx.AsyncClient(base_url=links_stack.url("ingest"), headers=tenant.headers, timeout=30) as ingest:
        r = await ingest.patch(f"/v1/messages/{held}", json={"send_at": (utcnow() + timedelta(seconds=1)).isoformat()})
        assert r.status_code == 202, r.text
    await all_final(pool, [held], timeout_s=90)
    r = await answers(links_stack, code, 302)
    assert r.headers["location"] == "https://shop.example.com/held"
    row = await pool.fetchrow("SELECT l.activated_at, m.submitted_at FROM links l JOIN messages m USING (message_id)"
                              " WHERE l.code = $1", code)
    assert row["activated_at"] is not None and abs((row["activated_at"] - row["submitted_at"]).total_seconds()) < 5


async def test_a_suppressed_messages_link_never_answers(links_stack: Stack, pool) -> None:
    to = numbers(2, seed=902)
    tenant = await make_tenant(pool)
    await pool.execute("INSERT INTO suppressions (tenant_id, phone_e164, reason, source) VALUES ($1, $2, 'stop', 'import')",
                       tenant.tenant_id, to[0])
    blocked, sent = await send_batches(links_stack, tenant, [
        {"to": to[0], "body": "Deal https://shop.example.com/x STOP to opt out", "type": "marketing"},
        {"to": to[1], "body": "Deal https://shop.example.com/x STOP to opt out", "type": "marketing"}])
    statuses = await all_final(pool, [blocked, sent], timeout_s=90)
    assert statuses[blocked] == "suppressed" and statuses[sent] != "suppressed"
    (blocked_code,), (sent_code,) = await codes_of(pool, blocked), await codes_of(pool, sent)
    await answers(links_stack, sent_code, 302)  # the links lane is through this batch's statuses
    await asyncio.sleep(2)
    assert error_code(await follow(links_stack, blocked_code)) == (404, "link_not_found")
    assert await pool.fetchval("SELECT activated_at FROM links WHERE code = $1", blocked_code) is None


async def test_links_expire(links_stack: Stack, pool, capsys) -> None:
    to = numbers(2, seed=903)
    from herald_tools.cli import main

    tenant = await make_tenant(pool)
    assert await asyncio.to_thread(main, ["admin", "tenant", "policy", tenant.tenant_id, "--link-ttl", "2d"]) == 0
    assert json.loads(capsys.readouterr().out)["link_ttl_s"] == 2 * 86400
    (short,) = await send_batches(links_stack, tenant, [
        {"to": to[0], "body": "Sale https://shop.example.com/a STOP to opt out", "type": "marketing"}])
    other = await make_tenant(pool)
    (default,) = await send_batches(links_stack, other, [
        {"to": to[1], "body": "Sale https://shop.example.com/b STOP to opt out", "type": "marketing"}])
    await all_final(pool, [short, default], timeout_s=90)
    rows = {r["message_id"]: r for r in await pool.fetch(
        "SELECT l.code, l.message_id::text, l.expires_at - m.accepted_at AS ttl FROM links l JOIN messages m"
        " USING (message_id) WHERE l.message_id = ANY($1::uuid[])", [short, default])}
    assert rows[short]["ttl"] == timedelta(days=2) and rows[default]["ttl"] == timedelta(days=90)
    code = rows[short]["code"]
    await answers(links_stack, code, 302)
    # two days later (the clock moved by hand): gone, with a reason of its own
    await pool.execute("UPDATE links SET expires_at = now() - interval '1 second' WHERE code = $1", code)
    r = await answers(links_stack, code, 410)
    assert error_code(r) == (410, "link_expired")
    assert refused(links_stack).get("expired", 0) >= 1
    assert (await follow(links_stack, rows[default]["code"])).status_code == 302


async def test_an_operator_takes_links_down(links_stack: Stack, pool, capsys) -> None:
    to = numbers(3, seed=904)
    from herald_tools.cli import main

    tenant, other = await make_tenant(pool), await make_tenant(pool)
    bad = "https://phish.example.net/login"
    ids = await send_batches(links_stack, tenant, [
        {"to": to[0], "body": f"Verify {bad}?a=1 STOP to opt out", "type": "marketing"},
        {"to": to[1], "body": f"Verify {bad}?a=2 or https://fine.example.org/ok STOP to opt out",
         "type": "marketing"}])
    (others,) = await send_batches(links_stack, other, [
        {"to": to[2], "body": f"Verify {bad} STOP to opt out", "type": "marketing"}])
    await all_final(pool, [*ids, others], timeout_s=90)
    (one,), (two, fine), (elsewhere,) = [await codes_of(pool, m) for m in (*ids, others)]
    for code in (one, two, fine, elsewhere):
        await answers(links_stack, code, 302)

    # every link of the tenant to the destination
    argv = ["admin", "--actor", "ops-anna", "link", "takedown", "https://phish.example.net/", "--tenant",
            tenant.tenant_id, "--reason", "phishing report 4411"]
    assert await asyncio.to_thread(main, argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["taken_down"], sorted(out["codes"])) == (2, sorted([one, two]))
    for code in (one, two):
        assert error_code(await answers(links_stack, code, 410)) == (410, "link_taken_down")
    assert (await follow(links_stack, fine)).status_code == 302  # another destination
    assert (await follow(links_stack, elsewhere)).status_code == 302  # another tenant
    row = await pool.fetchrow("SELECT taken_down_at, taken_down_by, takedown_reason FROM links WHERE code = $1", one)
    assert row["taken_down_at"] is not None and (row["taken_down_by"], row["takedown_reason"]) == (
        "ops-anna", "phishing report 4411")
    audit = await pool.fetchrow("SELECT actor, detail FROM audit_log WHERE action = 'link.takedown' AND target = $1"
                                " ORDER BY id DESC LIMIT 1", "https://phish.example.net/")
    assert audit["actor"] == "ops-anna" and audit["detail"]["links"] == 2
    assert refused(links_stack).get("taken_down", 0) >= 2

    # one link by its code, and a restore
    assert await asyncio.to_thread(main, ["admin", "link", "takedown", elsewhere]) == 0
    capsys.readouterr()
    assert error_code(await answers(links_stack, elsewhere, 410)) == (410, "link_taken_down")
    assert await asyncio.to_thread(main, ["admin", "link", "restore", elsewhere]) == 0
    assert json.loads(capsys.readouterr().out)["restored"] == 1
    await answers(links_stack, elsewhere, 302)
    assert await asyncio.to_thread(main, ["admin", "link", "show", one]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert (shown["code"], shown["taken_down_by"], shown["takedown_reason"]) == (one, "ops-anna", "phishing report 4411")


async def test_a_tenants_own_link_domain(links_stack: Stack, pool, capsys) -> None:
    to = numbers(2, seed=905)
    from herald_tools.cli import main

    branded, shared = await make_tenant(pool), await make_tenant(pool)
    own = f"go.{branded.tenant_id}.example"
    assert await asyncio.to_thread(main, ["admin", "tenant", "policy", branded.tenant_id, "--link-domain", own]) == 0
    assert json.loads(capsys.readouterr().out)["link_domain"] == own
    # no two tenants share a link domain
    assert await asyncio.to_thread(main, ["admin", "tenant", "policy", shared.tenant_id, "--link-domain",
                                          own.upper()]) == 1
    assert "belongs to another tenant" in capsys.readouterr().err

    (mine,) = await send_batches(links_stack, branded, [
        {"to": to[0], "body": "New in https://shop.example.com/new STOP to opt out", "type": "marketing"}])
    (theirs,) = await send_batches(links_stack, shared, [
        {"to": to[1], "body": "New in https://shop.example.com/new STOP to opt out", "type": "marketing"}])
    await all_final(pool, [mine, theirs], timeout_s=90)
    (code,), (shared_code,) = await codes_of(pool, mine), await codes_of(pool, theirs)
    control = f"http://127.0.0.1:{links_stack.ports.simulator_control}"
    sent = httpx.get(f"{control}/stats/smpp/messages", params={"client_ref": mine}).json()["messages"]
    assert f"https://{own}/{code} " in sent[0]["body"], sent
    sent = httpx.get(f"{control}/stats/smpp/messages", params={"client_ref": theirs}).json()["messages"]
    assert f"https://{DOMAIN}/{shared_code} " in sent[0]["body"], sent

    r = await answers(links_stack, code, 302, host=own)
    assert r.headers["location"] == "https://shop.example.com/new"
    assert (await follow(links_stack, code, host=own.upper() + ":443")).status_code == 302
    for host in (DOMAIN, None, "go.other.example"):  # the shared domain, the service's own address, another host
        assert error_code(await follow(links_stack, code, host=host)) == (404, "link_not_found")
    assert refused(links_stack).get("wrong_domain", 0) >= 3
    assert (await follow(links_stack, shared_code, host=DOMAIN)).status_code == 302  # the shared domain's links

    # back to the shared domain: new links are minted there; the old ones keep their domain
    assert await asyncio.to_thread(main, ["admin", "tenant", "policy", branded.tenant_id, "--link-domain", ""]) == 0
    assert json.loads(capsys.readouterr().out)["link_domain"] is None
    assert await pool.fetchval("SELECT domain FROM links WHERE code = $1", code) == own
