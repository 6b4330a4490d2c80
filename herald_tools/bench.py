"""``herald bench``: throughput, latency and memory of the whole pipeline on this machine.

Starts Kafka and PostgreSQL (deploy/local/infra.py), a fresh database and topic prefix,
the four services and the gateway simulator, then measures:

- campaign throughput: N recipients through the batch endpoint until every one has its
  final status (receipt recorded), in messages per second;
- OTP latency: from the API call to the simulator receiving the submission (p50, p99,
  max), alone and while a campaign drains at full speed;
- ingest: single-message requests per second, recipients per second via the batch endpoint;
- with ``--single``: only single sends (POST /v1/messages) from a load process of their own
  (aiohttp, 64 in flight, 10,000 requests): accepted per second, answer time p50/p99, errors;
- peak resident memory (VmHWM) of every process.

Results are printed and written to docs/benchmarks.md with the machine, versions and command.

``--webhooks ROWS`` measures the status webhook outbox and its worker alone instead
(herald_tools/webhook_bench.py; printed only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from herald_tools import history_bench, stage_bench, webhook_bench
from herald_tools.demo import NUMBER_PATTERNS, demo_numbers, marketing_countries, prepare
from herald_tools.stack import REPO, Ports, Stack, start_infra
from shared.settings import ServiceSettings

DOC = REPO / "docs" / "benchmarks.md"


@dataclass
class Results:
    command: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # what, measured, target
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, measured: str, target: str = "") -> None:
        self.rows.append((what, measured, target))
        print(f"  {what}: {measured}" + (f"   (target {target})" if target else ""), flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_service(stack: Stack) -> dict[str, float]:
    usage: dict[str, float] = {}
    for p in stack.processes:
        usage[p.name] = usage.get(p.name, 0.0) + cpu_seconds(p.popen.pid)
    return usage


async def campaign(stack: Stack, key: str, dsn: str, count: int, seed: int, countries: list[str],
                   url: str | None = None) -> tuple[int, float, float, dict[str, float]]:
    """Send ``count`` marketing messages in batches; return (accepted, seconds to accept, seconds to all final, CPU s by service)."""
    before = cpu_by_service(stack)
    messages = [{"to": n, "body": "Flash sale: 30% off until midnight", "type": "marketing"}
                for n in demo_numbers(count, seed=seed, countries=countries)]
    started = time.monotonic()
    ids = await post_batches(url or stack.url("ingest"), key, messages, 10_000)
    accepted_s = time.monotonic() - started
    await wait_final(dsn, ids, timeout_s=max(600, count / 50))
    total_s = time.monotonic() - started
    after = cpu_by_service(stack)
    return len(ids), accepted_s, total_s, {k: after.get(k, 0) - before.get(k, 0) for k in after}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def post_batches(base: str, key: str, messages: list[dict[str, Any]], size: int, concurrency: int = 2) -> list[str]:
    ids: list[str] = []
    chunks = [messages[i : i + size] for i in range(0, len(messages), size)]
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300) as client:

        async def one(chunk: list[dict[str, Any]]) -> list[str]:
            async with slots:
                r = await client.post("/v1/messages/batch", json={"messages": chunk})
                r.raise_for_status()
                return [x["message_id"] for x in r.json()["results"] if x.get("message_id")]

        for got in await asyncio.gather(*(one(c) for c in chunks)):
            ids += got
    return ids


def post_batches_in_process(base: str, key: str, messages: list[dict[str, Any]], size: int) -> list[str]:
    """post_batches for a ProcessPoolExecutor worker (its own event loop and interpreter)."""
    return asyncio.run(post_batches(base, key, messages, size))


async def wait_final(dsn: str, ids: list[str], timeout_s: float) -> float:
    """Seconds until every id has a final status (polled every 0.25 s)."""
    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    try:
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE message_id = ANY($1::uuid[]) AND status_rank = 100", ids
            )
            if done >= len(ids):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{done} of {len(ids)} final after {timeout_s:.0f}s")
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


Buckets = dict[tuple[str, ...], dict[float, float]]


def histogram_buckets(stack: Stack, metric: str, labels: tuple[str, ...],
                      services: tuple[str, ...] = ("ingest", "scheduler", "dispatcher", "reports")) -> Buckets:
    """Cumulative buckets of histogram ``metric`` per value of ``labels``, scraped now."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Buckets = {}
    for name in services:
        text = httpx.get(f"{stack.ops_url(name)}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name != metric:
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    key = tuple(sample.labels[k] for k in labels)
                    out.setdefault(key, {})[float(sample.labels["le"])] = sample.value
    return out


def quantile_edges(before: Buckets, after: Buckets, q: float = 0.99) -> dict[tuple[str, ...], tuple[str, float]]:
    """Per key: the upper edge of the bucket holding quantile ``q`` between two scrapes, and the count."""
    out = {}
    for key, buckets in sorted(after.items()):
        delta = {le: n - before.get(key, {}).get(le, 0.0) for le, n in buckets.items()}
        total = delta.get(float("inf"), 0.0)
        if total <= 0:
            continue
        edges = sorted(delta)
        edge = next(le for le in edges if delta[le] >= q * total)
        if edge == float("inf"):
            shown = f"> {edges[-2]:g} s"
        else:
            shown = f"≤ {edge * 1000:.0f} ms" if edge < 1 else f"≤ {edge:g} s"
        out[key] = (shown, total)
    return out


def stage_p99(before: Buckets, after: Buckets, topics: tuple[str, ...]) -> str:
    """p99 of each stage's event age (herald_consumer_event_age_seconds) between two scrapes."""
    parts = [f"{service} ← {topic} {shown} ({n:,.0f} events)"
             for (service, topic), (shown, n) in quantile_edges(before, after).items() if topic in topics]
    return "; ".join(parts) or "no events"


async def otp_latencies(stack: Stack, key: str, count: int, interval_s: float,
                        answers: list[float] | None = None) -> list[float]:
    """Seconds from each OTP's API call to the simulator having it; ``answers`` gets the API's
    own answer times (what ingest adds before the message is in Kafka)."""
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=headers, timeout=30) as api, \
            httpx.AsyncClient(base_url=stack.url("simulator"), headers={"Authorization": "Bearer sim-token"}) as sim:
        for i in range(count):
            started = time.monotonic()
            r = await api.post("/v1/messages", json={"to": f"+346{uuid.uuid4().int % 10**8:08d}",
                                                     "body": f"Your code is {i:06d}", "validity_s": 300})
            r.raise_for_status()
            if answers is not None:
                answers.append(time.monotonic() - started)
            mid = r.json()["message_id"]
            while not (await sim.get("/v1/sms", params={"client_ref": mid})).json()["messages"]:
                if time.monotonic() - started > 30:
                    raise TimeoutError("OTP not submitted in 30 s")
                await asyncio.sleep(0.002)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(interval_s)
    return latencies


async def ingest_rate(stack: Stack, key: str, requests: int, concurrency: int) -> float:
    """Single-message requests per second. The load comes from aiohttp: httpx's pool, not the
    server, is the limit past a few connections (measured: about 270 req/s at 32)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    url = f"{stack.url('ingest')}/v1/messages"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        counter = iter(range(requests))

        async def worker() -> None:
            for i in counter:
                async with session.post(url, json={"to": f"+346{i % 10**8:08d}", "body": "Your code is 123456"}) as r:
                    if r.status != 202:
                        raise RuntimeError(f"ingest answered {r.status}: {await r.text()}")

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.monotonic() - started)


@dataclass
class SingleSends:
    """What the single-send load process saw."""

    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    resets: int
    errors: list[str]
    ids: list[str] = field(default_factory=list)


async def single_sends(url: str, key: str, requests: int, concurrency: int, tag: str) -> SingleSends:
    """``requests`` single sends, ``concurrency`` in flight, each with an idempotency key of its own
    (what OTP clients send): every answer time, status and connection error is recorded."""
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    ids: list[str] = []
    resets = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as session:
        counter = iter(range(requests))

        async def worker() -> None:
            nonlocal resets
            for i in counter:
                body = {"to": f"+346{i % 10**8:08d}", "body": f"Your code is {i % 10**6:06d}",
                        "idempotency_key": f"bench-{tag}-{i}"}
                started = time.perf_counter()
                try:
                    async with session.post(url, json=body) as r:
                        raw = await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status == 202:
                            ids.append(json.loads(raw)["message_id"])
                        if r.status != 202 and len(errors) < 5:
                            errors.append(f"{r.status}: {(await r.text())[:200]}")
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                    resets += 1
                    if len(errors) < 5:
                        errors.append(repr(exc))
                    continue
                latencies.append(time.perf_counter() - started)

        # Warm-up: open the connections and load the key before the clock starts.
        async with session.post(url, json={"to": "+34600000000", "body": "warm-up"}) as r:
            await r.read()
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return SingleSends(time.monotonic() - started, latencies, statuses, resets, errors, ids)


def single_sends_in_process(url: str, key: str, requests: int, concurrency: int, tag: str) -> SingleSends:
    """single_sends in a process of its own: the load generator must not share ingest's core budget
    through this process's event loop (the benchmark would time its own pauses)."""
    return asyncio.run(single_sends(url, key, requests, concurrency, tag))


async def measure_single(stack: Stack, key: str, dsn: str, args: argparse.Namespace, results: Results) -> None:
    print(f"single sends: {args.requests:,} requests, {args.concurrency} in flight", flush=True)
    runner = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        before = cpu_by_service(stack)
        got = await asyncio.get_running_loop().run_in_executor(
            runner, single_sends_in_process, f"{stack.url('ingest')}/v1/messages", key, args.requests,
            args.concurrency, uuid.uuid4().hex[:6])
        after = cpu_by_service(stack)
    finally:
        runner.shutdown()
    accepted = got.statuses.get(202, 0)
    results.add(f"single sends accepted ({args.requests:,} requests, {args.concurrency} in flight, aiohttp)",
                f"{accepted / got.seconds:,.0f}/s ({accepted:,} in {got.seconds:.1f} s)", "≥ 2,000/s")
    if got.latencies:
        results.add("  answer time p50 / p99 / max",
                    f"{statistics.median(got.latencies) * 1000:.0f} / {percentile(got.latencies, 99) * 1000:.0f} / "
                    f"{max(got.latencies) * 1000:.0f} ms", "p99 ≤ 100 ms")
    others = {s: n for s, n in got.statuses.items() if s != 202}
    results.add("  other answers, connection resets", f"{others or 'none'}, {got.resets}", "none, 0")
    if accepted:
        results.add("  ingest CPU per accepted request", f"{(after['ingest'] - before.get('ingest', 0)) / accepted * 1000:.2f} ms")
    results.add("  CPU seconds per service during the run",
                ", ".join(f"{n} {after[n] - before.get(n, 0):.1f}"
                          for n in sorted(after, key=lambda n: before.get(n, 0) - after[n])))
    if got.ids:
        # The pipeline drains while the requests come in: from the first request to the last
        # message final (its receipt recorded by reports).
        waited = await wait_final(dsn, got.ids, 600)
        total = got.seconds + waited
        results.add("  every receipt recorded, end to end (first request → last message final)",
                    f"{len(got.ids) / total:,.0f} msg/s ({total:.1f} s; {waited:.1f} s after the last answer)",
                    "≥ 1,500 msg/s")
    for error in got.errors:
        results.notes.append(f"first errors: {error}")


def machine() -> str:
    cores = os.cpu_count()
    mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cores} cores ({cpu}), {mem_gb:.0f} GiB, {platform.system()} {platform.release()}"


def versions() -> str:
    pg = subprocess.run(["postgres", "--version"], capture_output=True, text=True).stdout.strip()
    import aiokafka
    import asyncpg as apg
    import fastapi
    import pydantic

    return (f"Python {platform.python_version()}, Kafka 4.1.1 (KRaft, single node), {pg}, aiokafka {aiokafka.__version__}, "
            f"asyncpg {apg.__version__}, FastAPI {fastapi.__version__}, pydantic {pydantic.VERSION}")


INTRO = [
    "# Benchmarks",
    "",
    "Written by `herald bench` (herald_tools/bench.py); rerun it to refresh this page. `herald bench --all`",
    "runs every measurement that has a target, each in a process of its own with a fresh stack, and",
    "rewrites this page (keeping the message history, a run of its own: `herald bench --history N`); a",
    "single run rewrites only its own section. Kafka, PostgreSQL, the four services and the gateway",
    "simulator all run on the same machine. docs/performance.md puts each figure beside its target",
    "and names the limiting stage.",
    "",
]


def section_name(args: argparse.Namespace) -> str:
    if args.history:
        return "message history"
    if args.stages:
        return "scale by stage"
    if args.campaign:
        return "campaign launch"
    if args.single:
        return "single sends"
    if args.webhook_sends:
        return "single sends with status webhooks"
    return f"{args.face.upper()} face" + (", lanes split" if args.split_lanes else "")


def write_doc(results: Results, started: datetime, section: str) -> None:
    """Replace this run's section of docs/benchmarks.md, keeping the others."""
    body = [
        f"<!-- bench:{section} -->",
        f"## {section[0].upper()}{section[1:]}",
        "",
        f"- when: {started.isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- versions: {versions()}",
        f"- command: `{results.command}`",
        "",
        "| measure | result | target |",
        "| --- | --- | --- |",
        *[f"| {w} | {m} | {t} |" for w, m, t in results.rows],
        "",
    ]
    if results.notes:
        body += ["Notes:", "", *[f"- {n}" for n in results.notes], ""]
    body.append(f"<!-- /bench:{section} -->")
    sections = read_sections(DOC.read_text() if DOC.exists() else "")
    sections[section] = "\n".join(body)
    order = ["HTTP face", "SMPP face", "HTTP face, lanes split", "SMPP face, lanes split", "campaign launch",
             "single sends", "single sends with status webhooks", "scale by stage", "message history"]
    names = sorted(sections, key=lambda n: order.index(n) if n in order else len(order))
    DOC.write_text("\n".join(INTRO) + "\n" + "\n\n".join(sections[n] for n in names) + "\n")


def read_sections(text: str) -> dict[str, str]:
    import re

    found = re.findall(r"(<!-- bench:(.+?) -->.*?<!-- /bench:\2 -->)", text, re.S)
    return {name: block for block, name in found}


def contact_quotas(count: int, countries: list[str]) -> dict[str, int]:
    """How many contacts each country gets: an equal share, but never more than half a country's
    demo number space (the US one has 10,000 numbers), the rest spread over the others. Raises
    when the countries open for marketing now cannot hold ``count`` distinct numbers."""
    room = {c: 10 ** NUMBER_PATTERNS[c][1] // 2 for c in countries}
    quotas: dict[str, int] = {}
    left = count
    for n, country in enumerate(sorted(countries, key=lambda c: room[c])):
        quotas[country] = min(-(-left // (len(countries) - n)), room[country])
        left -= quotas[country]
    if left > 0:
        raise ValueError(f"{', '.join(countries)} (open for marketing now) have room for {count - left:,} distinct "
                         f"demo numbers, not {count:,}: run at another hour or with fewer contacts")
    return quotas


async def seed_contacts(dsn: str, tenant: str, count: int, countries: list[str], tag: str) -> int:
    """``count`` distinct contacts with marketing consent, written with COPY (the import API
    runs at about 11,000 rows/s; this measures the launch, not the import)."""
    quotas = contact_quotas(count, countries)
    rows: list[tuple[Any, ...]] = []
    now = datetime.now(UTC)
    for i, country in enumerate(countries):
        numbers: dict[str, None] = {}
        seed = 100 + i
        while len(numbers) < quotas[country]:
            numbers.update(dict.fromkeys(demo_numbers(quotas[country] - len(numbers), seed=seed, countries=[country])))
            seed += 1000
        rows += [(tenant, n, "Ana", country, [tag], True, now) for n in list(numbers)[: quotas[country]]]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "contacts", records=rows,
            columns=["tenant_id", "phone_e164", "first_name", "country", "tags", "consent_marketing", "consent_marketing_at"],
        )
        await conn.execute("ANALYZE contacts")
    finally:
        await conn.close()
    return len(rows)


def memory_target(name: str) -> str:
    """The 300 MB goal is for Herald's services; the simulator is the test gateway."""
    return "— (test gateway: keeps every submission for the checks)" if name == "simulator" else "≤ 300 MB"


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def launch_campaign(stack: Stack, key: str, dsn: str, count: int, countries: list[str], drain_s: float,
                          results: Results) -> None:
    """Seed ``count`` contacts, launch a campaign to them, and measure the fan-out and memory."""
    print(f"seeding {count:,} contacts with COPY", flush=True)
    seeded = await seed_contacts(dsn, "bench", count, countries, "launch")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=headers, timeout=120) as api:
        r = await api.post("/v1/templates", json={"name": f"launch-{uuid.uuid4().hex[:6]}", "purpose": "marketing",
                                                  "default_language": "en",
                                                  "variants": {"en": "Hi {{first_name|there}}, 30% off everything today"}})
        r.raise_for_status()
        t = r.json()["template_id"]
        r = await api.post("/v1/campaigns", json={"name": "bench launch", "segment": '"launch" in tags',
                                                  "variants": [{"name": "A", "template_id": t, "percent": 50},
                                                               {"name": "B", "template_id": t, "percent": 50}]})
        r.raise_for_status()
        cid = r.json()["campaign_id"]
        before = cpu_by_service(stack)
        started = time.monotonic()
        (await api.post(f"/v1/campaigns/{cid}/launch")).raise_for_status()
        peak: dict[str, float] = {}
        fanned_out_s = None
        conn = await asyncpg.connect(dsn)
        final = 0
        next_count = 0.0
        try:
            while True:
                for p in stack.processes:
                    peak[p.name] = max(peak.get(p.name, 0.0), current_rss_mb(p.popen.pid))
                elapsed = time.monotonic() - started
                row = await conn.fetchrow("SELECT published, fanned_out_at FROM campaigns WHERE campaign_id = $1", uuid.UUID(cid))
                if fanned_out_s is None and row["fanned_out_at"] is not None:
                    fanned_out_s = elapsed
                    fan_cpu = cpu_by_service(stack)
                    print(f"  fanned out {row['published']:,} in {elapsed:.1f} s", flush=True)
                if elapsed >= next_count:
                    final = await conn.fetchval("SELECT count(*) FROM messages WHERE status_rank = 100")
                    next_count = elapsed + 5
                    print(f"  {elapsed:6.0f} s: published {row['published']:,}, final {final:,}", flush=True)
                if fanned_out_s is not None and (final >= seeded or elapsed - fanned_out_s >= drain_s):
                    break
                if elapsed > 3600:
                    raise TimeoutError("the campaign did not fan out within an hour")
                await asyncio.sleep(0.5)
            final = await conn.fetchval("SELECT count(*) FROM messages WHERE status_rank = 100")
            waiting = await conn.fetch(
                "SELECT status, count(*) AS n FROM messages WHERE status_rank < 100 GROUP BY status ORDER BY n DESC")
        finally:
            await conn.close()
    total_s = time.monotonic() - started
    assert fanned_out_s is not None
    results.add(f"campaign launch to {seeded:,} contacts: audience streamed into Kafka (fan-out)",
                f"{seeded / fanned_out_s:,.0f} msg/s ({fanned_out_s:.1f} s)", "≥ 10,000 msg/s")
    results.add("messages with a final status (receipt recorded)",
                f"{final:,} of {seeded:,} after {total_s:.0f} s ({final / total_s:,.0f} msg/s end to end)", "every message")
    if waiting:
        results.add("not final yet when the run stopped, by status",
                    ", ".join(f"{r['status']} {r['n']:,}" for r in waiting))
    cpu = {k: fan_cpu.get(k, 0) - before.get(k, 0) for k in fan_cpu}
    results.add("CPU seconds per service during the fan-out",
                ", ".join(f"{n} {s:.1f}" for n, s in sorted(cpu.items(), key=lambda x: -x[1])))
    for process in stack.processes:
        results.add(f"peak resident memory during launch and drain, {process.name}",
                    f"{peak_rss_mb(process.popen.pid):.0f} MB (sampled max {peak.get(process.name, 0):.0f} MB)",
                    memory_target(process.name))
    results.notes.append(
        "Contacts are written with COPY before the clock starts; the campaign is created and launched through the API. "
        "The fan-out is the launcher reading the segment a page at a time, rendering each contact's variant and "
        "publishing to the bulk lane while the scheduler, dispatcher and reports work on what it already published."
    )


SPLIT = {  # --split-lanes: (service, its environment) per process, as docs/operations.md deploys them
    "ingest": [{"HERALD_CAMPAIGN_LAUNCHER": "false"},  # single sends (OTPs)
               {"HERALD_NICE": "10"}],  # the batch endpoint and the campaign launcher
    "scheduler": [{"HERALD_LANES": '["main", "journeys", "commands", "erasures", "subject-access"]'}, {"HERALD_LANES": '["bulk"]', "HERALD_NICE": "10"}],
    "dispatcher": [{"HERALD_LANES": '["main", "erasures", "subject-access"]'}, {"HERALD_LANES": '["bulk"]', "HERALD_NICE": "10"}],
    "reports": [{}],
}


def start_split(stack: Stack) -> str:
    """Start the stack with the priority and campaign lanes in processes of their own, the
    campaign ones at a lower CPU priority; return the URL campaign batches are posted to."""
    stack.start("simulator")
    bulk_url = ""
    for name, variants in SPLIT.items():
        for extra in variants:
            process = stack.start(name, extra_env=extra)
            if name == "ingest" and "HERALD_NICE" in extra:
                bulk_url = f"http://127.0.0.1:{process.port}"
    return bulk_url


async def measure_stages(env: dict[str, str], count: int, results: Results) -> None:
    """Each stage alone on a pre-filled topic, one instance then two pinned to cores (stage_bench)."""
    from shared.settings import KafkaSettings

    def stack_factory(extra: dict[str, str]) -> Stack:
        return Stack(env={**env, **extra}, ports=Ports.random(), log_dir=REPO / ".herald" / "bench-logs",
                     gateway_rate=1_000_000)

    base = KafkaSettings(kafka_bootstrap=env["HERALD_KAFKA_BOOTSTRAP"], topic_prefix=env["HERALD_TOPIC_PREFIX"])
    runs = []
    for stage in stage_bench.STAGES:
        for instances in (1, 2):
            got = await stage_bench.run_stage(stack_factory, base, stage, instances, count, "bench", cpu_by_service)
            print(f"  {stage} x{instances}: {got.rate:,.0f} msg/s", flush=True)
            runs.append(got)
    for row in stage_bench.scaling_rows(runs):
        results.add(*row)
    results.notes.append(
        f"Each run: {count:,} events on the stage's input topic (a topic prefix of its own) before its instances "
        "start; timed from the first committed offset to the last. Instance i is pinned to core i "
        f"(of {os.cpu_count()}); Kafka, PostgreSQL and (for the dispatcher) the simulator share those cores."
    )


async def run(args: argparse.Namespace, results: Results) -> None:
    start_infra()
    tag = uuid.uuid4().hex[:6]
    base = ServiceSettings()
    dsn_admin = base.database_url.get_secret_value()
    db = f"herald_bench_{tag}"
    conn = await asyncpg.connect(dsn_admin)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    dsn = dsn_admin.rsplit("/", 1)[0] + f"/{db}"
    env = {"HERALD_DATABASE_URL": dsn, "HERALD_TOPIC_PREFIX": f"bench{tag}.", "HERALD_KAFKA_BOOTSTRAP": base.kafka_bootstrap,
           "HERALD_LOG_LEVEL": "WARNING", "HERALD_RATE_LIMIT_MESSAGES_PER_MINUTE": "100000000",
           "HERALD_RATE_LIMIT_REQUESTS_PER_MINUTE": "10000000", "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200",
           # one tenant and one loopback receiver take every webhook: no per-tenant or per-host cap below the pool
           "HERALD_WEBHOOK_TENANT_CONCURRENCY": "100000", "HERALD_WEBHOOK_HOST_CONCURRENCY": "100000"}
    os.environ.update(env)
    key = await prepare(ServiceSettings(), "bench")
    if args.face == "smpp":  # the dispatcher binds to the simulator's SMSC face instead of its HTTP API
        from herald_tools.stack import free_port

        smpp_port = free_port()
        env["HERALD_SIM_SMPP_PORT"] = str(smpp_port)
        env["HERALD_GATEWAYS"] = json.dumps([{
            "name": "smsc", "kind": "smpp", "host": "127.0.0.1", "port": smpp_port, "system_id": "herald",
            "password": "sim-pass", "binds": 2, "window": 50, "rate_per_s": 1_000_000, "send_message_id_tlv": True,
        }])
    if args.stages:
        await measure_stages(env, args.stages, results)
        conn = await asyncpg.connect(dsn_admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()
        return
    stack = Stack(env=env, ports=Ports.random(), log_dir=REPO / ".herald" / "bench-logs", gateway_rate=1_000_000)
    if args.split_lanes:
        bulk_url = start_split(stack)
    else:
        stack.start_all()
        bulk_url = stack.url("ingest")
    try:
        await asyncio.to_thread(stack.wait_ready, 120)
        open_now = marketing_countries(True) or ["US"]
        if args.campaign:
            await launch_campaign(stack, key, dsn, args.campaign, open_now, args.drain_s, results)
            return
        if args.single:
            if args.pause:  # time to attach a profiler to the processes listed in the logs
                print("processes: " + ", ".join(f"{p.name} {p.popen.pid}" for p in stack.processes), flush=True)
                await asyncio.sleep(args.pause)
            await measure_single(stack, key, dsn, args, results)
            return
        if args.webhook_sends:
            found = await webhook_bench.end_to_end(stack.url("ingest"), key, dsn, args.webhook_sends)
            results.add(f"{args.webhook_sends:,} single sends with a status webhook: to the last final-status webhook",
                        f"{found['msg_per_s_to_last_webhook']:,} msg/s ({found['last_final_webhook_s']} s; "
                        f"sent in {found['sent_s']} s, all final in {found['all_final_s']} s; "
                        f"{found['webhooks_ok']:,} webhooks, {found['out_of_order']} out of order)",
                        "≥ 1,000 msg/s")
            return
        print(f"campaign throughput: {args.recipients:,} recipients", flush=True)
        count, accepted_s, total_s, cpu = await campaign(stack, key, dsn, args.recipients, 1, open_now, bulk_url)
        results.add(f"campaign, {count:,} recipients, {args.face.upper()} face: accept to every receipt recorded",
                    f"{count / total_s:,.0f} msg/s ({total_s:.1f} s)", "≥ 5,000 msg/s (SMPP face)")
        results.add("batch ingest while the pipeline runs", f"{count / accepted_s:,.0f} recipients/s")
        busiest = max((n for n in cpu if n != "simulator"), key=cpu.get)
        results.add("CPU seconds per service during that campaign",
                    ", ".join(f"{n} {s:.1f}" for n, s in sorted(cpu.items(), key=lambda x: -x[1])))
        herald_cpu = {n: s for n, s in cpu.items() if n != "simulator"}
        results.add("CPU per message, per service",
                    ", ".join(f"{n} {s / count * 1e6:,.0f} µs" for n, s in sorted(herald_cpu.items(), key=lambda x: -x[1]))
                    + f"; the four together {sum(herald_cpu.values()) / count * 1e6:,.0f} µs", "≤ 150 µs together")
        results.notes.append(
            f"The busiest stage in the campaign was {busiest} ({cpu[busiest]:.1f} CPU s of {total_s:.1f} s wall); "
            f"the whole pipeline used {sum(cpu.values()) / total_s:.2f} of {os.cpu_count()} cores, Kafka and PostgreSQL not counted."
        )
        if args.scale:
            scaled = args.scale if args.scale != "auto" else busiest
            print(f"scale mode: a second {scaled}", flush=True)
            extra = stack.start(scaled)
            await asyncio.to_thread(stack.wait_ready, 120, [extra])
            count2, _, total2, cpu2 = await campaign(stack, key, dsn, args.recipients, 7, open_now, bulk_url)
            results.add(f"scale: campaign with one {scaled}", f"{count / total_s:,.0f} msg/s")
            results.add(f"scale: campaign with two {scaled}", f"{count2 / total2:,.0f} msg/s")
            results.add("CPU seconds per service with two " + scaled,
                        ", ".join(f"{n} {s:.1f}" for n, s in sorted(cpu2.items(), key=lambda x: -x[1])))

        print("OTP latency, alone", flush=True)
        alone = await otp_latencies(stack, key, args.otps, 0.02)
        results.add("OTP latency alone (API call → simulator), p50 / p99 / max",
                    f"{statistics.median(alone) * 1000:.0f} / {percentile(alone, 99) * 1000:.0f} / {max(alone) * 1000:.0f} ms",
                    "p99 ≤ 100 ms")

        print("OTP latency while a campaign drains", flush=True)
        drain = [{"to": n, "body": "Second wave: 40% off", "type": "marketing"}
                 for n in demo_numbers(args.recipients // 2, seed=2, countries=open_now)]
        # The campaign is posted from a process of its own: encoding 10,000-message bodies in this
        # event loop would stall the OTP client and count the benchmark's own pauses as latency.
        senders = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        sender = asyncio.get_running_loop().run_in_executor(
            senders, post_batches_in_process, bulk_url, key, drain, 10_000)
        await asyncio.sleep(2)
        age = ("herald_consumer_event_age_seconds", ("service", "topic"))
        lag = ("herald_event_loop_lag_seconds", ("service",))
        gc_pause = ("herald_gc_pause_seconds", ("service", "generation"))
        ages_before, lag_before, gc_before = (histogram_buckets(stack, *m) for m in (age, lag, gc_pause))
        answered: list[float] = []
        during = await otp_latencies(stack, key, args.otps, 0.05, answered)
        ages_after, lag_after, gc_after = (histogram_buckets(stack, *m) for m in (age, lag, gc_pause))
        drain_ids = await sender
        senders.shutdown()
        await wait_final(dsn, drain_ids, timeout_s=max(600, args.recipients / 50))
        results.add("OTP latency while a campaign drains, p50 / p99 / max",
                    f"{statistics.median(during) * 1000:.0f} / {percentile(during, 99) * 1000:.0f} / {max(during) * 1000:.0f} ms",
                    "p99 ≤ 250 ms")
        results.add("  of which ingest's answer to the OTP request, p50 / p99",
                    f"{statistics.median(answered) * 1000:.0f} / {percentile(answered, 99) * 1000:.0f} ms")
        results.add("  event age per stage while the OTPs ran, p99 (priority lane)",
                    stage_p99(ages_before, ages_after, ("messages.accepted.v1", "messages.outbound.priority.v1")))
        results.add("  event age per stage while the OTPs ran, p99 (bulk lane)",
                    stage_p99(ages_before, ages_after, ("messages.accepted.bulk.v1", "messages.outbound.bulk.v1")))
        results.add("  event-loop lag while the OTPs ran, p99 / p99.9 per service",
                    "; ".join(f"{k[0]} {v[0]} / {quantile_edges(lag_before, lag_after, 0.999)[k][0]}"
                              for k, v in quantile_edges(lag_before, lag_after).items()))
        results.add("  GC pauses while the OTPs ran, p99 per service and generation",
                    "; ".join(f"{k[0]} gen{k[1]} {v[0]} ({v[1]:,.0f})" for k, v in quantile_edges(gc_before, gc_after).items()
                              if k[1] != "0") or "none above generation 0")

        print("ingest alone", flush=True)
        rps = await ingest_rate(stack, key, args.requests, 32)
        results.add("ingest, single-message requests (32 concurrent)", f"{rps:,.0f} req/s")
        batch = [{"to": n, "body": "Batch", "type": "transactional"} for n in demo_numbers(10_000, seed=4)]
        started = time.monotonic()
        for _ in range(3):
            await post_batches(bulk_url, key, batch, 10_000, concurrency=1)
        results.add("ingest, batch endpoint (10,000 per request)",
                    f"{30_000 / (time.monotonic() - started):,.0f} recipients/s", "≥ 25,000 recipients/s")
        for process in stack.processes:
            label = process.name if process.instance == 1 else f"{process.name} (instance {process.instance})"
            results.add(f"peak resident memory, {label}", f"{peak_rss_mb(process.popen.pid):.0f} MB", memory_target(process.name))
    finally:
        stack.stop()
        conn = await asyncpg.connect(dsn_admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


#: ``herald bench --all``: the runs that together measure every target of docs/benchmarks.md.
ALL_RUNS: list[list[str]] = [
    ["--single"],
    ["--webhook-sends", "10000"],
    ["--face", "smpp", "--split-lanes"],
    ["--stages", "100000"],
    ["--campaign", "1000000", "--drain-s", "900"],
]
#: Sections no run of ``--all`` writes but which stay (a run of their own, with its own command).
KEPT_SECTIONS = ("message history",)


def run_all() -> int:
    """Each run of ALL_RUNS in a process of its own (a fresh stack each), one after the other."""
    import subprocess

    if DOC.exists():  # a fresh set: what earlier runs wrote goes, but for the kept sections
        sections = read_sections(DOC.read_text())
        kept = [sections[n] for n in KEPT_SECTIONS if n in sections]
        DOC.write_text("\n".join(INTRO) + "\n" + "\n\n".join(kept) + ("\n" if kept else ""))
    failed = []
    for run_args in ALL_RUNS:
        print(f"=== herald bench {' '.join(run_args)}", flush=True)
        began = time.monotonic()
        code = subprocess.call([sys.executable, "-m", "herald_tools.bench", *run_args])
        print(f"=== exit {code} after {time.monotonic() - began:.0f} s", flush=True)
        if code:
            failed.append(" ".join(run_args))
    if failed:
        print("failed: " + "; ".join(failed), flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herald bench", description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--otps", type=int, default=200)
    parser.add_argument("--requests", type=int, default=None,
                        help="single-message requests (default 3,000; 10,000 with --single)")
    parser.add_argument("--single", action="store_true",
                        help="instead: only single sends (POST /v1/messages) from a load process of their own")
    parser.add_argument("--concurrency", type=int, default=64, help="with --single: requests in flight")
    parser.add_argument("--pause", type=float, default=0,
                        help="with --single: print the process ids and wait this long before the load (to attach a profiler)")
    parser.add_argument("--face", choices=("http", "smpp"), default="http", help="the simulator face the dispatcher uses")
    parser.add_argument("--scale", nargs="?", const="auto", default=None,
                        help="run the campaign again with a second instance of SERVICE (default: the busiest)")
    parser.add_argument("--campaign", type=int, default=0, metavar="CONTACTS",
                        help="instead: launch a campaign to this many contacts (e.g. 1000000) and measure fan-out and memory")
    parser.add_argument("--drain-s", type=float, default=120.0,
                        help="with --campaign: keep measuring this long after the fan-out (or until every message is final)")
    parser.add_argument("--split-lanes", action="store_true",
                        help="run the transactional and campaign lanes in processes of their own, the campaign ones "
                             "niced (the production layout of docs/operations.md)")
    parser.add_argument("--stages", type=int, default=0, metavar="EVENTS",
                        help="instead: each stage (scheduler, dispatcher, reports) alone on a pre-filled topic of "
                             "EVENTS events (100000 gives a steady measure), one instance then two pinned to their own cores")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--all", action="store_true",
                        help="every run with a target, one after the other, each in a process of its own: "
                             + "; ".join(" ".join(run) for run in ALL_RUNS)
                             + " (sections of earlier runs other than the message history are dropped)")
    webhook_bench.add_arguments(parser)
    history_bench.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.all:
        return run_all()
    if args.requests is None:
        args.requests = 10_000 if args.single else 3000
    if args.webhooks:  # the webhook outbox alone: printed, never written to docs/benchmarks.md
        print(json.dumps(asyncio.run(webhook_bench.run(args))))
        return 0
    results = Results(command=" ".join(["herald bench", *(argv if argv is not None else sys.argv[1:])]))
    started = datetime.now(UTC)
    if args.history:
        start_infra()
        asyncio.run(history_bench.run(args, results))
    else:
        asyncio.run(run(args, results))
    if not args.no_write:
        write_doc(results, started, section_name(args))
        print(f"written to {DOC}")
    print(json.dumps(results.rows, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
