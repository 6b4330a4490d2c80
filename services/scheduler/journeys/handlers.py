"""The journeys' lane handler (contact events) and durable timer (due runs).

The lane never publishes: it enrols, exits and wakes runs in one transaction per batch, and
a run that has something to do now gets ``due_at = now``. Only the timer advances runs and
publishes sends: it locks due runs with FOR UPDATE SKIP LOCKED (any number of scheduler
instances, none takes the same run), publishes the send requests (ingest accepts them as it
accepts the API's messages, services/ingest/journey_sends.py), and only then commits
the new state. A crash in between advances the run again from the old state, and the sends
carry the same message ids (run id + step), so every consumer drops the repeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from services.scheduler.journeys import metrics
from services.scheduler.journeys.engine import ACTIVE, EventFact, LaneResult, Run, Send, advance, on_event
from services.scheduler.journeys.limits import JourneyLimiter
from services.scheduler.journeys.messages import SendError, build_send, send_event
from services.scheduler.journeys.repository import JourneyRepository
from shared.contracts import ContactEventAccepted, utcnow
from shared.kafka import Incoming, Outgoing, Publisher
from shared.logging import mask_phone
from shared.periodic import run_periodically

log = logging.getLogger(__name__)


class JourneyEventsHandler:
    """Consumes ``contact-events.accepted.v1`` in batches."""

    def __init__(self, repository: JourneyRepository, clock: Callable[[], datetime] = utcnow) -> None:
        self.repository = repository
        self.clock = clock

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        now = self.clock()
        facts: list[tuple[str, EventFact]] = []
        for item in batch:
            event: ContactEventAccepted = item.event.payload
            facts.append(
                (
                    item.event.tenant,
                    EventFact(event.event_id, event.name, event.phone, event.contact_id, event.properties, event.occurred_at, now),
                )
            )
        contacts = {(t, f.phone) for t, f in facts}
        async with self.repository.pool.acquire() as conn, conn.transaction():
            startable = await self.repository.startable(conn, {t for t, _ in facts}, {f.name for _, f in facts})
            runs = await self.repository.lock_active_runs(conn, contacts)
            running = await self.repository.running(conn, runs)
            journey_ids = {j.journey_id for js in startable.values() for j in js}
            last = await self.repository.last_entries(conn, journey_ids, {f.phone for _, f in facts})
            by_contact: dict[tuple[str, str], list[Run]] = defaultdict(list)
            for run in runs:
                by_contact[(run.tenant, run.phone)].append(run)
            result = LaneResult()
            for tenant, fact in facts:  # in offset order: a contact's events arrive in order (keyed by phone)
                on_event(fact, startable.get(tenant, []), running, by_contact[(tenant, fact.phone)], last, result)
            fresh = {r.run_id for r in result.new}
            inserted = await self.repository.insert_runs(conn, result.new)
            # Runs loaded here, and runs enrolled here that then changed (exited, woken) in this
            # batch; a "new" run that was there already (a redelivered trigger) is left alone.
            await self.repository.update_runs(
                conn, [r for r in result.changed.values() if r.run_id not in fresh or r.run_id in inserted], now
            )
        metrics.RUNS_STARTED.inc(len(inserted))
        for run in result.changed.values():
            if run.state != ACTIVE:
                metrics.RUNS_ENDED.labels(run.state, (run.exit_reason or "").split(":", 1)[0]).inc()
        return []


class JourneyTimer:
    """Advances due runs; any number of scheduler instances can run it."""

    def __init__(
        self,
        repository: JourneyRepository,
        publisher: Publisher,
        interval_s: float,
        batch: int,
        clock: Callable[[], datetime] = utcnow,
        smart_encoding: bool = True,
        limiter: JourneyLimiter | None = None,
    ) -> None:
        self.repository = repository
        self.limiter = limiter  # the per-key message limits (None: not limited)
        self.publisher = publisher
        self.interval_s = interval_s
        self.batch = batch
        self.clock = clock
        self.smart_encoding = smart_encoding
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await run_periodically("journey_advance", self._advance_all, self.interval_s, self._stop, logger=log,
                               error_message="advancing due journey runs failed; retrying")

    async def _advance_all(self) -> None:
        while await self.advance_due() >= self.batch and not self._stop.is_set():
            pass

    async def advance_due(self) -> int:
        """Advance one batch of due runs; return how many were due."""
        now = self.clock()
        repo = self.repository
        async with repo.pool.acquire() as conn, conn.transaction():
            runs = await repo.due_runs(conn, now, self.batch)
            if not runs:
                return 0
            journeys = await repo.running(conn, runs)
            contacts = await repo.contacts(conn, {(r.tenant, r.phone) for r in runs})
            moved: list[Run] = []
            sends = []
            for run in runs:
                journey = journeys.get((run.journey_id, run.version))
                if journey is None:  # cannot happen with the foreign key; never loop on it
                    log.error("journey version of run %s is missing", run.run_id)
                    run.state, run.due_at, run.exit_reason, run.ended_at = "exited", None, "journey_missing", now
                    moved.append(run)
                    continue
                after, steps = advance(run, journey, contacts.get((run.tenant, run.phone)), now)
                moved.append(after)
                sends += [(after, s) for s in steps]
            if self.limiter is not None and sends:
                moved, sends = await self._within_limits(conn, runs, moved, sends, now)
            templates = await repo.templates(
                conn, {(r.tenant, s.step.template_id) for r, s in sends if s.step.template_id is not None}
            )
            outgoing: list[Outgoing] = []
            for run, send in sends:
                contact = contacts.get((run.tenant, run.phone))
                template = templates.get((run.tenant, send.step.template_id)) if send.step.template_id else None
                try:
                    request = build_send(send, run, contact, template, now, smart=self.smart_encoding)
                except SendError as exc:
                    metrics.SENDS.labels(exc.code, "").inc()
                    log.warning(
                        "journey send step skipped: %s", exc,
                        extra={"run_id": str(run.run_id), "step": send.step_id, "to": mask_phone(run.phone)},
                    )
                    continue
                metrics.SENDS.labels("published", request.type.value).inc()
                # ingest accepts it (services/ingest/journey_sends.py) as it accepts the API's messages
                outgoing.append(send_event(run.tenant, request, f"journey-{run.run_id.hex[:16]}"))
            await repo.update_runs(conn, moved, now)
            await self.publisher.publish(outgoing)  # before commit: a crash re-advances, same message ids
        for before in runs:
            if before.due_at is not None:
                metrics.TIMER_LATENESS.observe(max(0.0, (now - before.due_at).total_seconds()))
        for run in moved:
            if run.state != ACTIVE:
                metrics.RUNS_ENDED.labels(run.state, (run.exit_reason or "").split(":", 1)[0]).inc()
        return len(runs)

    async def _within_limits(
        self, conn: Any, before: list[Run], moved: list[Run], sends: list[tuple[Run, Send]], now: datetime
    ) -> tuple[list[Run], list[tuple[Run, Send]]]:
        """Hold back the runs whose sends are over the message limit of the key that wrote their
        journey: such a run keeps its state and is due again when the limit allows (its sends
        wait, as an API client told 429 would). One check per key for the whole batch; only a
        key over its limit is then checked run by run, to send what still fits."""
        assert self.limiter is not None
        keys = await self.repository.sending_keys(conn, {r.journey_id for r, _ in sends})
        per_run: dict[Any, list[tuple[Run, Send]]] = defaultdict(list)
        for run, send in sends:
            per_run[run.run_id].append((run, send))
        by_key: dict[str, list[Any]] = defaultdict(list)
        for run_id, items in per_run.items():
            limits = keys.get(items[0][0].journey_id)
            if limits is not None:
                by_key[limits.key_id].append(run_id)
        held: dict[Any, int] = {}  # run id -> seconds to wait
        for key_id, run_ids in by_key.items():
            mpm = next(keys[per_run[r][0][0].journey_id] for r in run_ids).messages_per_minute
            verdict = await self.limiter.check(key_id, sum(len(per_run[r]) for r in run_ids), mpm)
            if verdict.allowed:
                continue
            for i, run_id in enumerate(run_ids):  # over the limit: send what fits, hold the rest
                one = await self.limiter.check(key_id, len(per_run[run_id]), mpm)
                if not one.allowed:
                    held.update((r, one.retry_after_s) for r in run_ids[i:])
                    break
        if not held:
            return moved, sends
        originals = {r.run_id: r for r in before}
        kept: list[Run] = []
        for run in moved:
            if run.run_id in held:
                wait = originals[run.run_id].copy()
                wait.due_at = now + timedelta(seconds=max(1, held[run.run_id]))
                kept.append(wait)
                metrics.SENDS.labels("rate_limited", "").inc(len(per_run[run.run_id]))
            else:
                kept.append(run)
        log.info("journey sends over their key's message limit held back", extra={"runs": len(held)})
        return kept, [(r, s) for r, s in sends if r.run_id not in held]
