"""``herald up``: the whole platform on this machine, and a demo that sends real traffic.

Starts Kafka and PostgreSQL (deploy/local/infra.py), applies migrations, creates topics
and a demo tenant, starts the four services and the gateway simulator as processes, sends
demo messages through ingest's HTTP API, follows them to their final status with a
progress bar, prints a summary, and keeps the stack up until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from herald_tools.stack import REPO, Ports, Stack, infra, start_infra
from shared.settings import ServiceSettings

STATE = Path(os.environ.get("HERALD_STATE_DIR", REPO / ".herald"))
PID_FILE = STATE / "stack.json"
FINAL = ("delivered", "undelivered", "failed", "suppressed", "rejected", "expired", "unknown")


class _Console(Console):
    """rich's console, except that a closed pipe silences it instead of exiting the process.

    rich answers BrokenPipeError with ``SystemExit(1)``: after Ctrl-C on ``make run | tee log``
    (which ends ``tee`` too) the next print would abort the shutdown half way.
    """

    def on_broken_pipe(self) -> None:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


console = _Console()


# Valid mobile number patterns of several countries (all answered by the local simulator).
NUMBER_PATTERNS: dict[str, tuple[str, int]] = {
    "ES": ("+346", 8),
    "FR": ("+3361", 7),
    "DE": ("+49151", 8),
    "US": ("+1415555", 4),
    "IN": ("+9198", 8),
    "BR": ("+55119", 8),
    "GB": ("+447400", 6),
    # With these two some country that takes SMS from another country's number is open for
    # marketing at any hour of any day (tests/tools/unit/test_demo_numbers.py): Japan 23:00-11:30
    # UTC, Mexico 14:00-03:00 UTC, Sundays too.
    "JP": ("+81901", 7),
    "MX": ("+5255", 8),
}


def demo_numbers(count: int, seed: int = 7, countries: Iterable[str] = ("ES", "FR", "DE", "US", "IN"),
                 *, unique: bool = False) -> list[str]:
    """Valid mobile numbers, round-robin over ``countries``. ``unique``: ``count`` different
    numbers (a country's space can be small: the US one has 10,000, and between 23:30 and 03:00
    UTC it is the only country open for marketing), else ValueError when the countries have fewer."""
    rng = random.Random(seed)
    patterns = [NUMBER_PATTERNS[c] for c in countries]
    if not patterns:
        raise ValueError("no countries to draw numbers from")
    if not unique:
        return [f"{p}{rng.randrange(10**d):0{d}d}" for p, d in (patterns[i % len(patterns)] for i in range(count))]
    if count > sum(10**d for _, d in set(patterns)):
        raise ValueError(f"{count} different numbers asked of countries that have fewer")
    seen: dict[str, None] = {}
    i = 0
    while len(seen) < count:
        p, d = patterns[i % len(patterns)]
        seen.setdefault(f"{p}{rng.randrange(10**d):0{d}d}")
        i += 1
    return list(seen)


def marketing_countries(allowed: bool, now: datetime | None = None, margin: timedelta = timedelta(minutes=30)) -> list[str]:
    """Countries where marketing SMS are allowed (or held) now and for ``margin`` longer.

    The demo and the tests send marketing messages only where quiet hours let them go out
    now, so every message reaches a final state whatever the hour; tests of quiet hours pick
    the countries where they are held.
    """
    from services.scheduler.quiet_hours import MessageFacts, evaluate
    from shared.statuses import MessageType

    now = now or datetime.now(UTC)
    chosen = []
    for country, (prefix, digits) in NUMBER_PATTERNS.items():
        facts = MessageFacts(to=f"{prefix}{'1' * digits}", country=country, type=MessageType.MARKETING)
        if all(evaluate(facts, when).allowed == allowed for when in (now, now + margin)):
            chosen.append(country)
    return chosen


async def prepare(settings: ServiceSettings, tenant: str) -> str:
    """Migrations, topics, and a fresh API key for ``tenant``."""
    from shared.auth import create_key, create_tenant
    from shared.db import create_pool, migrate
    from shared.kafka import ensure_topics

    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            async with conn.transaction():
                # The demo sends marketing to made-up numbers that are not contacts: its tenant
                # runs in the 'opt_out' consent mode (only a refusal blocks marketing).
                await create_tenant(conn, tenant, tenant.title(), "opt_out")
                await conn.execute("UPDATE tenants SET marketing_consent = 'opt_out' WHERE tenant_id = $1", tenant)
                key = await create_key(conn, tenant, name="demo")
    finally:
        await pool.close()
    await ensure_topics(settings)
    return key


def build_messages(count: int) -> tuple[list[dict[str, Any]], list[str]]:
    # Marketing goes only where quiet hours allow it now (elsewhere it would be held, not
    # final, until morning); transactional messages go everywhere, at any hour.
    open_now = marketing_countries(True)
    everywhere = demo_numbers(count)
    promo = demo_numbers(count, seed=8, countries=open_now) if open_now else []
    messages = []
    for i in range(count):
        marketing = bool(open_now) and i % 3 == 0
        body = (
            f"Flash sale: 30% off everything until midnight! Code FLASH{i % 97}. Reply STOP to opt out."
            if marketing
            else f"Your verification code is {100000 + (i * 7919) % 900000}. It expires in 10 minutes."
        )
        messages.append({"to": promo[i] if marketing else everywhere[i], "body": body,
                         "type": "marketing" if marketing else "transactional",
                         "sender": "Herald", "metadata": {"demo": "1"}})
    suppressed = [m["to"] for m in messages if m["type"] == "marketing"][::17]  # opted out: must be suppressed
    # A few bad ones, to show the machine-readable 4xx reasons.
    messages[5]["to"] = "+34123"  # impossible number
    messages[11]["to"] = "600123456"  # not E.164
    messages[17]["body"] = ""  # empty body
    messages[23]["to"] = "+34910000000"  # a fixed line: cannot take SMS
    return messages, suppressed


async def send_all(
    base: str, key: str, messages: list[dict[str, Any]], suppressed: list[str], progress: Progress, task: Any
) -> tuple[list[uuid.UUID], dict[str, int]]:
    headers = {"Authorization": f"Bearer {key}"}
    ids: list[uuid.UUID] = []
    rejected: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        for number in suppressed:
            r = await client.put(f"/v1/suppressions/{number}", json={"reason": "demo_opt_out"})
            r.raise_for_status()
        # Twenty single requests (the OTP path), the rest in batches of 500.
        for message in messages[:20]:
            r = await client.post("/v1/messages", json=message)
            if r.status_code == 202:
                ids.append(uuid.UUID(r.json()["message_id"]))
            else:
                code = r.json()["error"]["code"]
                rejected[code] = rejected.get(code, 0) + 1
            progress.advance(task)
        rest = messages[20:]
        for i in range(0, len(rest), 500):
            chunk = rest[i : i + 500]
            r = await client.post("/v1/messages/batch", json={"messages": chunk})
            r.raise_for_status()
            for result in r.json()["results"]:
                if "message_id" in result and result["message_id"]:
                    ids.append(uuid.UUID(result["message_id"]))
                else:
                    code = result["error"]["code"]
                    rejected[code] = rejected.get(code, 0) + 1
            progress.advance(task, len(chunk))
    return ids, rejected


async def follow(dsn: str, ids: list[uuid.UUID], progress: Progress, task: Any, timeout_s: float) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await conn.fetch(
                "SELECT status, count(*) AS n, count(submitted_at) AS sub FROM messages"
                " WHERE message_id = ANY($1::uuid[]) AND status_rank > 0 GROUP BY status",
                ids,
            )
            counts = {r["status"]: r["n"] for r in rows}
            counts["submitted"] = sum(r["sub"] for r in rows)
            done = sum(counts.get(s, 0) for s in FINAL)
            progress.update(task, completed=done)
            if done >= len(ids) or time.monotonic() > deadline:
                return counts
            await asyncio.sleep(0.3)
    finally:
        await conn.close()


def summary(counts: dict[str, int], accepted: int, rejected: dict[str, int], elapsed: float, stack: Stack) -> None:
    table = Table(title="Herald demo summary", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    final = sum(counts.get(s, 0) for s in FINAL)
    rows = [
        ("accepted (HTTP 202)", accepted),
        ("submitted to the gateway", counts.get("submitted", 0)),
        ("delivered", counts.get("delivered", 0)),
        ("undelivered", counts.get("undelivered", 0)),
        ("failed", counts.get("failed", 0)),
        ("unknown (outcome could not be determined, not resent)", counts.get("unknown", 0)),
        ("suppressed (opted out, marketing)", counts.get("suppressed", 0)),
        ("rejected (HTTP 4xx): " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())), sum(rejected.values())),
        ("in a final state (unknown included)", f"{final} of {accepted}"),
    ]
    for what, n in rows:
        table.add_row(what, str(n))
    console.print(table)
    console.print(f"[bold]{accepted / elapsed:,.0f} messages per second[/] end to end "
                  f"({accepted} messages from the first request to the last final status in {elapsed:.1f} s)")
    console.print("\nAPI docs:    " + f"{stack.url('ingest')}/docs  (ingest)   {stack.url('reports')}/docs  (reports)")
    for name in ("ingest", "scheduler", "dispatcher", "reports"):
        console.print(f"metrics:     {stack.ops_url(name)}/metrics  ({name})")
    console.print(f"simulator:   http://127.0.0.1:{stack.ports.simulator_control}/stats")
    console.print(f"logs:        {stack.log_dir}")


async def _demo(stack: Stack, settings: ServiceSettings, count: int) -> int:
    key = await prepare(settings, "demo")
    console.print("[green]✓[/] migrations applied, topics ready, tenant [bold]demo[/] created")
    stack.start_all()
    _write_pids(stack)
    await asyncio.to_thread(stack.wait_ready)
    console.print("[green]✓[/] ingest, scheduler, dispatcher, reports and the gateway simulator are up")
    messages, suppressed = build_messages(count)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        sending = progress.add_task("sending   ", total=len(messages))
        started = time.monotonic()
        ids, rejected = await send_all(stack.url("ingest"), key, messages, suppressed, progress, sending)
        final_task = progress.add_task("final state", total=len(ids))
        counts = await follow(settings.database_url.get_secret_value(), ids, progress, final_task, timeout_s=300)
        elapsed = time.monotonic() - started
    summary(counts, len(ids), rejected, elapsed, stack)
    console.print(f"\nYour demo API key: {key}")
    done = sum(counts.get(s, 0) for s in FINAL)
    return 0 if done == len(ids) else 1


RECEIPT_SECRET_FILE = STATE / "receipt-secret"


def _write_receipt_secret(stack: Stack) -> None:
    """This run's receipt secret (the simulator's and ingest's), readable by its owner only,
    for signing receipts by hand (README)."""
    STATE.mkdir(parents=True, exist_ok=True)
    RECEIPT_SECRET_FILE.unlink(missing_ok=True)
    fd = os.open(RECEIPT_SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(stack.receipt_secret + "\n")


ERASURE_KEY_FILE = STATE / "erasure-key"


def _erasure_key() -> str:
    """The local stack's erasure key (shared/erasure.py), made once and kept in .herald/erasure-key
    (owner-only): unlike the receipt secret it must outlive a run, or the hashes of numbers erased
    in an earlier run would no longer be recognised."""
    STATE.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(ERASURE_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return ERASURE_KEY_FILE.read_text().strip()
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _write_pids(stack: Stack) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    PID_FILE.write_text(json.dumps([p.popen.pid for p in stack.processes]))


def say(text: str) -> None:
    """Print, but never let a closed terminal or pipe abort what follows.

    Ctrl-C on ``make run | tee log`` ends ``tee`` too, so every later print raises
    BrokenPipeError; a shutdown must still stop the services and the infrastructure.
    """
    try:
        console.print(text)
    except OSError:  # BrokenPipeError, or the terminal is gone (EIO)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def shutdown(stack: Stack, *, keep_infra: bool, stop_infra: Callable[[], str] | None = None,
             tell: Callable[[str], None] = say) -> None:
    """Stop the services (then Kafka and PostgreSQL unless kept) first; report afterwards."""
    stack.stop()
    PID_FILE.unlink(missing_ok=True)
    stopped = "" if keep_infra else (stop_infra or (lambda: infra("stop", check=False).stdout.strip()))()
    tell("services stopped")
    if stopped:
        tell(stopped)


def wait_for_stop(stack: Stack, poll_s: float = 1.0) -> str:
    """Block until Ctrl-C/SIGTERM or until one of the stack's processes is gone (``make stop``)."""
    signals = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        while True:
            got = signal.sigtimedwait(signals, poll_s)
            if got is not None:
                return signal.Signals(got.si_signo).name
            gone = [p.name for p in stack.processes if p.popen.poll() is not None]
            if gone:
                return "stopped from outside: " + ", ".join(sorted(set(gone)))
    finally:  # a blocked SIGTERM is inherited by every process started afterwards
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def run_demo(count: int, *, wait: bool, keep_infra: bool) -> int:
    console.print("[bold]Herald[/]: starting Kafka and PostgreSQL…")
    try:
        proc = start_infra()
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    console.print(proc.stdout.strip())
    settings = ServiceSettings()
    stack = Stack(env={}, ports=Ports(), log_dir=STATE / "logs", erasure_key=_erasure_key())
    _write_receipt_secret(stack)
    code = 1
    try:
        code = asyncio.run(_demo(stack, settings, count))
        if wait:
            say("\nThe stack keeps running. Press [bold]Ctrl-C[/] to stop it (or run `make stop`).")
            why = wait_for_stop(stack)
            say(f"stopping ({why})…")
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        say(f"[red]{exc}[/]")
        code = 2
    finally:
        shutdown(stack, keep_infra=keep_infra)
    return code


def down() -> int:
    if PID_FILE.exists():
        for pid in json.loads(PID_FILE.read_text()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        PID_FILE.unlink(missing_ok=True)
    print(infra("stop", check=False).stdout.strip())
    return 0
