"""Claim, throttle, submit, retry: the dispatcher's batch handler and its reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import secrets
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from services.dispatcher import metrics
from services.dispatcher.domain.fair import interleave
from services.dispatcher.domain.health import GatewayHealth, State, Thresholds
from services.dispatcher.domain.retry import backoff
from services.dispatcher.domain.routing import Choice, Route, Router
from services.dispatcher.gateways.base import (
    Gateway,
    LookupPending,
    LookupUnsupported,
    Outcome,
    Refused,
    Submitted,
    Unknown,
)
from services.dispatcher.gateways.sandbox import SANDBOX
from services.dispatcher.repository import CampaignStates, ClaimRepository, Finish, ParkItem, TenantStates
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.throttle import LocalThrottle, Throttle, sender_key
from shared.contracts import (
    MessageAccepted,
    MessageAcceptedEvent,
    MessageOutbound,
    MessageStatusChanged,
    MessageStatusEvent,
    derived_event_id,
    utcnow,
)
from shared.kafka import Incoming, Outgoing, Publisher, error_kind
from shared.periodic import run_periodically
from shared.statuses import Status
from shared.topics import STATUS, accepted_topic

if TYPE_CHECKING:
    from services.dispatcher.parking import Parker

log = logging.getLogger(__name__)
UNKNOWN_RECHECK_S = 15.0
RELEASE_TIMEOUT_S = 5.0  # a failed batch's claims are released within this, or left to expire


class Ownership:
    """Who this process is on claims, and which claims it is working on right now.

    ``owner`` is the instance id plus a token new at every process start: a process restarted
    under the same name (``<host>-1`` in a container, a pod name) is another owner, so it neither
    renews nor mistakes for its own the claims of the process before it. Only the claims in
    ``held`` (a batch or a reconcile pass in progress) have their leases renewed; a claim left
    open by a failed batch expires and goes to the reconciler.
    """

    def __init__(self, instance_id: str) -> None:
        self.owner = f"{instance_id}#{secrets.token_hex(6)}"
        self._held: Counter[uuid.UUID] = Counter()

    @contextlib.contextmanager
    def holding(self, ids: Iterable[uuid.UUID]) -> Iterator[None]:
        ids = list(ids)
        self._held.update(ids)
        try:
            yield
        finally:
            self._held.subtract(ids)
            for i in ids:
                if self._held[i] <= 0:
                    del self._held[i]

    def holds(self, message_id: uuid.UUID) -> bool:
        return message_id in self._held

    def held(self) -> list[uuid.UUID]:
        return list(self._held)


def ownership_of(settings: DispatcherSettings) -> Ownership:
    """The process's one Ownership (shared by its lanes and its reconciler through their settings)."""
    if settings._ownership is None:
        settings._ownership = Ownership(settings.instance_id)
    return settings._ownership


class AttemptJournal(Protocol):
    """Where submission attempts are written down before they are made (the claims)."""

    async def record_attempts(self, gateway: str, ids: list[uuid.UUID]) -> None: ...

    async def record_outcomes(self, gateway: str, ids: list[uuid.UUID], outcomes: list[str]) -> None: ...


def outcome_name(outcome: Outcome) -> str:
    if isinstance(outcome, Submitted):
        return "submitted"
    if isinstance(outcome, Unknown):
        return "unknown"
    return f"refused:{outcome.code}"


@dataclass(frozen=True, slots=True)
class Job:
    tenant: str
    trace_id: str
    message: MessageOutbound
    attempts: int = 0
    avoid: frozenset[str] = frozenset()  # gateways this message just failed on
    skipped: tuple[str, ...] = ()  # gateways passed over for it so far (timeline)


_STATE_STATUS = {
    "submitted": Status.SUBMITTED, "failed": Status.FAILED, "expired": Status.EXPIRED, "unknown": Status.UNKNOWN,
}


def status_event(job: Job, finish: Finish) -> Outgoing:
    status = _STATE_STATUS[finish.state]
    payload = MessageStatusChanged(
        message_id=job.message.message_id,
        status=status,
        reason_code=finish.reason_code,
        reason=finish.reason,
        gateway=finish.gateway,
        gateway_message_id=finish.gateway_message_id,
        gateway_part_ids=list(finish.part_ids),
        attempts=finish.attempts,
        segments=job.message.segments,
        type=job.message.type,
        detail=dict(finish.detail),
        # A campaign message left the lanes: ingest's mark for the launcher's pacing (docs/operations.md, fair share).
        campaign_page_at=job.message.accepted_at if job.message.campaign_id is not None else None,
    )
    event = MessageStatusEvent(
        event_id=derived_event_id(job.message.message_id, status),
        tenant=job.tenant,
        trace_id=job.trace_id,
        payload=payload,
    )
    return Outgoing(STATUS, str(job.message.message_id), event)


class PriorityGate:
    """Bulk (marketing) chunks wait while priority (transactional) chunks are being sent."""

    def __init__(self) -> None:
        self._active = 0
        self._clear = asyncio.Event()
        self._clear.set()

    @contextlib.contextmanager
    def priority(self) -> Iterator[None]:
        self._active += 1
        self._clear.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._clear.set()

    async def wait_for_bulk_turn(self) -> None:
        await self._clear.wait()


# Throttling answers mean "slow down", not "this gateway is broken": they must not trip failover.
THROTTLED_CODES = frozenset({"throttled", "ESME_RTHROTTLED", "ESME_RMSGQFUL", "http_429", "20429"})


def _bad_for_health(outcome: Outcome) -> bool:
    """Outcomes that say the gateway itself is in trouble (not the message)."""
    if isinstance(outcome, Unknown):
        return True
    return isinstance(outcome, Refused) and outcome.retriable and outcome.code not in THROTTLED_CODES


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a task group, so callers see (and classify) the error itself."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


SANDBOX_BATCH = 500  # sandbox submissions per call


async def keep_writing(what: str, write: Callable[[], Awaitable[None]], budget_s: float,
                       clock: Callable[[], float] = time.monotonic) -> None:
    """Write what a gateway answered, retrying a transient database error (a deadlock's victim, a
    connection cut) in place for up to ``budget_s``: the answers (the gateway's message ids) exist
    only in this process's memory. Failing the batch instead would leave its messages to the
    reconciler, which cannot ask every gateway (an SMPP centre knows only its own ids), so they
    would end ``unknown`` and their receipts would never match. A permanent error still fails."""
    deadline = clock() + budget_s
    delay = 0.05
    while True:
        try:
            await write()
            return
        except Exception as exc:
            if error_kind(exc) == "permanent" or clock() + delay > deadline:
                raise
            metrics.RESULT_WRITE_RETRIES.labels(what).inc()
            log.warning("writing a gateway's answers failed; retrying", extra={"what": what, "error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class Sender:
    """Routes, throttles and submits jobs, retrying refusals that may pass later."""

    def __init__(
        self,
        gateways: dict[str, Gateway],
        settings: DispatcherSettings,
        throttle: Throttle | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], datetime] = utcnow,
        journal: AttemptJournal | None = None,
        parker: Parker | None = None,
    ) -> None:
        self.parker = parker  # None: a refusal past the retry budget fails (retries_exhausted)
        self.gateways = gateways
        self.journal = journal  # every attempt is recorded there before it is made
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.wall_clock = wall_clock
        self.throttle = throttle or LocalThrottle({g.name: (g.rate_per_s, g.burst) for g in settings.gateways}, clock)
        self.chunk = {g.name: g.batch_size for g in settings.gateways} | {SANDBOX: SANDBOX_BATCH}
        self.router = Router(
            [Route(r.name, tuple(r.gateways), frozenset(r.countries), tuple(r.prefixes), frozenset(r.types))
             for r in settings.routes],
            tuple(g.name for g in settings.gateways),
        )
        thresholds = Thresholds(
            window_s=settings.failover_window_s,
            min_samples=settings.failover_min_samples,
            error_rate=settings.failover_error_rate,
            slow_s=settings.failover_slow_s,
            cooldown_s=settings.failover_cooldown_s,
        )
        self.health = {name: GatewayHealth(thresholds) for name in [*(g.name for g in settings.gateways), SANDBOX]}
        self.gate = PriorityGate()
        for name in self.health:
            metrics.GATEWAY_OPEN.labels(name).set(0)

    def one_shot(self) -> Sender:
        """This sender (same gateways, throttle, health, parking) trying each message once: a
        retriable refusal goes straight to the give-up branch (parked again, or failed)."""
        twin = copy.copy(self)
        twin.settings = self.settings.model_copy(update={"retry_max_attempts": 1})
        return twin

    def available(self, gateway: str) -> bool:
        return self.health[gateway].available(self.clock())

    def choose(self, job: Job) -> Choice:
        return self.router.choose(job.message, self.available, job.avoid)

    def route(self, message: MessageOutbound) -> str:
        return self.router.choose(message, self.available).gateway

    def _record(self, gateway: str, outcomes: list[Outcome], latency: float) -> None:
        health = self.health[gateway]
        before = health.state
        bad = sum(1 for o in outcomes if _bad_for_health(o))
        now = self.clock()
        if len(outcomes) - bad:
            health.record(now, True, latency, len(outcomes) - bad)
        if bad:
            health.record(now, False, latency, bad)
        if health.state is not before:
            metrics.GATEWAY_OPEN.labels(gateway).set(1 if health.state is State.OPEN else 0)
            metrics.GATEWAY_TRANSITIONS.labels(gateway, health.state.value).inc()
            log.warning("gateway %s is now %s", gateway, health.state.value, extra={"reason": health.reason})

    async def _submit_chunk(self, gateway: str, chunk: list[Job]) -> list[Outcome]:
        ids = [j.message.message_id for j in chunk]
        if self.journal is not None:
            await self.journal.record_attempts(gateway, ids)  # before: a crash after this is looked up on it
        started = self.clock()
        outcomes = await self.gateways[gateway].submit_many([j.message for j in chunk])
        latency = self.clock() - started
        metrics.SUBMIT_SECONDS.labels(gateway).observe(latency)
        self._record(gateway, outcomes, latency)
        if self.journal is not None:
            names = [outcome_name(o) for o in outcomes]
            journal = self.journal
            await keep_writing("outcomes", lambda: journal.record_outcomes(gateway, ids, names),
                               self.settings.claim_lease_s / 2)
        return outcomes

    async def _throttled(self, gateway: str, jobs: list[Job], priority: bool) -> list[Outcome]:
        """Submit ``jobs`` through ``gateway`` in chunks, each once the gateway's bucket (and, for a
        sender with a contracted rate, the sender's) lets it go; outcomes in the jobs' order. Each
        rate-limited sender's jobs are fed beside the others, so one slow sender holds back only
        its own messages."""
        lanes: dict[tuple[str, str, float, float | None] | None, list[int]] = {}
        for index, job in enumerate(jobs):
            limit = job.message.sender_throttle
            lane = None
            if limit is not None and job.message.sender and gateway != SANDBOX:
                lane = (sender_key(job.tenant, job.message.sender), limit.kind, float(limit.rate_per_s), limit.burst)
            lanes.setdefault(lane, []).append(index)
        results: list[Outcome | None] = [None] * len(jobs)
        try:
            # A failure (the database gone while recording, the throttle unreachable) cancels the
            # chunks still in flight: none keeps submitting for a batch that has failed.
            async with asyncio.TaskGroup() as group:
                feeders = [self._feed(group, gateway, jobs, indexes, lane, priority, results)
                           for lane, indexes in lanes.items()]
                if len(feeders) == 1:
                    await feeders[0]
                else:
                    for feeder in feeders:
                        group.create_task(feeder)
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        assert all(o is not None for o in results)
        return results  # type: ignore[return-value]

    async def _feed(self, group: asyncio.TaskGroup, gateway: str, jobs: list[Job], indexes: list[int],
                    lane: tuple[str, str, float, float | None] | None, priority: bool,
                    results: list[Outcome | None]) -> None:
        size = self.chunk[gateway]
        if lane is not None:
            key, kind, rate, burst = lane
            await self.throttle.ensure(key, rate, burst)
            # about a tenth of a second of the sender's rate per chunk (at least one message): its
            # messages go out evenly, not in one burst a second
            size = max(1, min(size, int(rate / 10), int(burst or rate) or 1))

        async def submit(chunk_indexes: list[int]) -> None:
            outcomes = await self._submit_chunk(gateway, [jobs[i] for i in chunk_indexes])
            for i, outcome in zip(chunk_indexes, outcomes, strict=True):
                results[i] = outcome

        for start in range(0, len(indexes), size):
            chunk_indexes = indexes[start : start + size]
            segments = sum(jobs[i].message.segments for i in chunk_indexes)
            if lane is not None:
                waited = await self._wait_for(lane[0], segments, priority)
                if waited > 0:
                    metrics.SENDER_THROTTLE_WAIT.labels(lane[1], "priority" if priority else "bulk").observe(waited)
            if gateway != SANDBOX:  # the sandbox sends nothing: no gateway capacity to share
                waited = await self._wait_for(gateway, segments, priority)
                if waited > 0:
                    metrics.THROTTLE_WAIT.labels(gateway).observe(waited)
            group.create_task(submit(chunk_indexes))

    async def _wait_for(self, bucket: str, segments: float, priority: bool) -> float:
        """Wait until bucket ``bucket`` lets ``segments`` go; the seconds waited."""
        if priority:
            wait = await self.throttle.reserve(bucket, segments)
            if wait > 0:
                await self.sleep(wait)
            return wait
        # Campaign chunks take tokens only once the bucket holds them, never booked
        # ahead: a code (another process's priority lane) would wait behind them.
        await self.gate.wait_for_bulk_turn()
        waited = 0.0
        while (wait := await self.throttle.take_free(bucket, segments)) > 0:
            wait = max(wait, 0.001)  # a rounding remainder must not spin without time passing
            waited += wait
            await self.sleep(wait)
            await self.gate.wait_for_bulk_turn()
        return waited

    async def send(self, jobs: list[Job], *, priority: bool = False) -> tuple[list[tuple[Job, Finish]], list[Job]]:
        """Returns (finished jobs with their record, jobs whose outcome is unknown)."""
        with self.gate.priority() if priority else contextlib.nullcontext():
            return await self._send(jobs, priority)

    async def _send(self, jobs: list[Job], priority: bool) -> tuple[list[tuple[Job, Finish]], list[Job]]:
        finished: list[tuple[Job, Finish]] = []
        unknown: list[Job] = []
        parked: list[ParkItem] = []
        deadline = self.clock() + self.settings.retry_budget_s
        pending = jobs
        round_ = 0
        while pending:
            round_ += 1
            now_wall = self.wall_clock()
            by_gateway: dict[str, list[tuple[Job, Choice]]] = defaultdict(list)
            for job in pending:
                expires = job.message.expires_at
                if expires is not None and now_wall >= expires:
                    metrics.EXPIRED.inc()
                    finished.append((job, Finish(job.message.message_id, "expired", None, None, job.attempts,
                                                 "validity_expired",
                                                 f"not sent: its validity ended at {expires.isoformat()}")))
                    continue
                choice = self.choose(job)
                metrics.ROUTE_DECISIONS.labels(choice.route, choice.gateway, str(choice.failover).lower()).inc()
                by_gateway[choice.gateway].append((job, choice))
            retry: list[Job] = []
            for gateway, group in by_gateway.items():
                outcomes = await self._throttled(gateway, [j for j, _ in group], priority)
                for (job, choice), outcome in zip(group, outcomes, strict=True):
                    attempts = job.attempts + 1
                    skipped = tuple(dict.fromkeys(job.skipped + choice.skipped))
                    detail = tuple({"route": choice.route, **({"failover_from": ",".join(skipped)} if skipped else {})}.items())
                    mid = job.message.message_id
                    if isinstance(outcome, Submitted):
                        metrics.SUBMISSIONS.labels(gateway, "submitted").inc()
                        finished.append((job, Finish(mid, "submitted", gateway, outcome.gateway_message_id, attempts,
                                                     part_ids=outcome.part_ids, detail=detail)))
                    elif isinstance(outcome, Unknown):
                        metrics.SUBMISSIONS.labels(gateway, "unknown").inc()
                        log.warning("submission outcome unknown", extra={"message_id": str(mid), "error": outcome.message})
                        unknown.append(replace(job, attempts=attempts))
                    elif outcome.retriable and attempts < self.settings.retry_max_attempts and self.clock() < deadline:
                        metrics.SUBMISSIONS.labels(gateway, "retry").inc()
                        # Try another gateway of the route next time, if there is one.
                        retry.append(replace(job, attempts=attempts, avoid=job.avoid | {gateway}, skipped=skipped))
                    else:
                        # Refused (never accepted) past the budget: park it to wait for the route, if allowed.
                        held = self.parker.hold(job, gateway, outcome, attempts) if outcome.retriable and self.parker else None
                        if held is not None:
                            metrics.SUBMISSIONS.labels(gateway, "parked").inc()
                            parked.append(held)
                            continue
                        metrics.SUBMISSIONS.labels(gateway, "failed").inc()
                        if outcome.retriable:
                            code = "retries_exhausted"
                            reason = f"gave up after {attempts} attempts: {outcome.code} {outcome.message}"
                        else:
                            code, reason = outcome.code, outcome.message
                        finished.append((job, Finish(mid, "failed", gateway, None, attempts, code, reason[:500], detail=detail)))
            pending = retry
            if pending:
                # All of a route's gateways tried: start over with the preferred ones.
                route_size = {j.message.message_id: len(self.router.route_for(j.message).gateways) for j in pending}
                pending = [j if len(j.avoid) < route_size[j.message.message_id] else replace(j, avoid=frozenset()) for j in pending]
                delay = min(backoff(round_, self.settings.retry_base_s, self.settings.retry_cap_s), max(0.0, deadline - self.clock()))
                log.info("retrying %d submissions in %.1fs", len(pending), delay)
                await self.sleep(delay)
        if parked:
            assert self.parker is not None
            await self.parker.park(parked)
        return finished, unknown


class OutboundHandler:
    """One lane's batch handler: claim, send (priority lanes go first), record, report."""

    def __init__(
        self, claims: ClaimRepository, sender: Sender, settings: DispatcherSettings, *, priority: bool = True,
        campaigns: CampaignStates | None = None, ownership: Ownership | None = None,
        tenants: TenantStates | None = None,
    ) -> None:
        self.claims = claims
        self.sender = sender
        self.settings = settings
        self.priority = priority
        self.campaigns = campaigns
        self.tenants = tenants
        self.ownership = ownership or ownership_of(settings)
        if sender.journal is None:
            sender.journal = claims  # attempts are recorded on the claims they belong to

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        jobs = {}
        outgoing: list[Outgoing] = []
        held = await self._held_campaigns(batch)
        disabled = await self.tenants.disabled({i.event.tenant for i in batch}) if self.tenants else set()
        for item in batch:
            message = item.event.payload
            assert isinstance(message, MessageOutbound)
            if message.campaign_id in held or item.event.tenant in disabled:
                # Paused or cancelled after the scheduler released it, or its tenant disabled: back
                # to the scheduler, which holds it until resumed or suppresses it (campaign_cancelled,
                # tenant_disabled: one final status, from one place). Nothing is claimed or sent.
                outgoing.append(regate_event(item.event.tenant, item.event.trace_id, message))
                metrics.REGATED.inc()
                continue
            jobs.setdefault(message.message_id, Job(item.event.tenant, item.event.trace_id, message))
        if not jobs:
            return outgoing
        owner = self.ownership.owner
        claims = await self.claims.claim(
            owner,
            self.settings.claim_lease_s,
            [(mid, j.tenant, j.message.model_dump_json()) for mid, j in jobs.items()],
        )
        fresh: list[Job] = []
        orphaned: list[uuid.UUID] = []
        for mid, job in jobs.items():
            claim = claims[mid]
            if claim.fresh:
                fresh.append(job)
            elif claim.state in _STATE_STATUS:
                # Seen before and finished: publish its status again (same event id) in
                # case the first publish was lost in a crash.
                finish = Finish(mid, claim.state, claim.gateway, claim.gateway_message_id, claim.attempts,
                                claim.reason_code, claim.reason, tuple(claim.gateway_part_ids or ()))
                outgoing.append(status_event(job, finish))
            elif claim.owner == owner and not self.ownership.holds(mid):
                # Ours, left open when this batch failed before (the consumer retries it): its
                # outcome is unknown, so it goes to the reconciler rather than being skipped.
                orphaned.append(mid)
            else:
                metrics.SKIPPED_CLAIMED.inc()  # another instance holds it, or the reconciler will
        if orphaned:
            metrics.RELEASED_CLAIMS.labels("redelivered").inc(len(orphaned))
            await self.claims.release_for_reconcile(orphaned, UNKNOWN_RECHECK_S)
        if not self.priority:  # tenants take turns at the gateway within the batch
            fresh = interleave(fresh, lambda j: j.tenant, self.settings.bulk_tenant_weights)
        ids = [j.message.message_id for j in fresh]
        with self.ownership.holding(ids):
            try:
                finished, unknown = await self.sender.send(fresh, priority=self.priority)
                budget = self.settings.claim_lease_s / 2
                await keep_writing("finish", lambda: self.claims.finish([f for _, f in finished]), budget)
                await keep_writing("release", lambda: self.claims.release_for_reconcile(
                    [j.message.message_id for j in unknown], UNKNOWN_RECHECK_S), budget)
            except BaseException:
                await self._release_after_failure(ids)
                raise
        outgoing += [status_event(job, finish) for job, finish in finished]
        return outgoing

    async def _release_after_failure(self, ids: list[uuid.UUID]) -> None:
        """The batch failed after claiming: what it did not finish goes to the reconciler (after the
        recheck delay, so a submission cut off in flight has reached the gateway). If the database
        is away, the claims are no longer renewed and expire instead."""
        if not ids:
            return
        metrics.RELEASED_CLAIMS.labels("batch_failed").inc(len(ids))
        try:
            await asyncio.wait_for(self.claims.release_for_reconcile(ids, UNKNOWN_RECHECK_S), RELEASE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - best effort: the claims expire within the lease anyway
            log.warning("claims of a failed batch not released; they expire within the lease",
                        extra={"claims": len(ids), "error": repr(exc)})


    async def _held_campaigns(self, batch: list[Incoming]) -> set[uuid.UUID]:
        if self.campaigns is None:
            return set()
        ids = {i.event.payload.campaign_id for i in batch if i.event.payload.campaign_id is not None}
        return await self.campaigns.held(ids) if ids else set()


def regate_event(tenant: str, trace_id: str, message: MessageOutbound) -> Outgoing:
    """The message as accepted, for the scheduler to decide again (same event id as when accepted)."""
    accepted = MessageAccepted.model_construct(**{k: v for k, v in message.__dict__.items() if k != "released_at"})
    event = MessageAcceptedEvent.model_construct(
        event_id=message.message_id, type="message.accepted", version=1, occurred_at=message.accepted_at,
        tenant=tenant, trace_id=trace_id, payload=accepted,
    )
    lane = accepted_topic(message)
    return Outgoing(lane, message.to, event)


def gateways_to_ask(attempts: list[dict] | None, route_gateways: Iterable[str]) -> list[str]:
    """Which gateways may have a stale claim's message: every gateway that got an attempt, in
    order. With no record of attempts (a claim older than the record) every gateway of its route."""
    if attempts is None:
        return list(dict.fromkeys(route_gateways))
    return list(dict.fromkeys(str(a["gateway"]) for a in attempts if a.get("gateway")))


class Reconciler:
    """Resolves claims whose owner died or whose outcome is unknown: it asks every gateway that
    got an attempt, and resends only when none of them has the message. Its loop also renews the
    leases of the claims this process is working on, and refreshes the oldest-open-claim gauge."""

    def __init__(
        self,
        claims: ClaimRepository,
        sender: Sender,
        publisher: Publisher,
        settings: DispatcherSettings,
        ownership: Ownership | None = None,
    ) -> None:
        self.claims = claims
        self.sender = sender
        self.publisher = publisher
        self.settings = settings
        self.ownership = ownership or ownership_of(settings)
        if sender.journal is None:
            sender.journal = claims
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._renew_loop())
            group.create_task(self._reconcile_loop())

    async def renew_once(self) -> int:
        """Keep alive the claims this process is working on (and only those)."""
        return await self.claims.renew(self.ownership.owner, self.settings.claim_lease_s, self.ownership.held())

    async def _renew_loop(self) -> None:
        # Its own task: a long reconcile pass (a resend that retries) must not delay renewals.
        await run_periodically("claim_renewal", self.renew_once, self.settings.claim_lease_s / 3, self._stop,
                               logger=log, error_message="lease renewal failed", error_level=logging.WARNING,
                               traceback=False)

    async def _reconcile_loop(self) -> None:
        await run_periodically("reconcile", self._reconcile_pass, self.settings.reconcile_interval_s, self._stop,
                               logger=log, error_message="reconcile pass failed")

    async def _reconcile_pass(self) -> None:
        metrics.OLDEST_CLAIM_AGE.set(await self.claims.oldest_open_age())
        while await self.reconcile_once() and not self._stop.is_set():
            pass

    async def reconcile_once(self, limit: int = 200) -> int:
        rows = await self.claims.take_stale(self.ownership.owner, self.settings.claim_lease_s, limit)
        # A lease that ran out while this process's own batch still works on the claim (the
        # database was away longer than the lease): taking it renewed it; that batch finishes it.
        rows = [r for r in rows if not self.ownership.holds(r["message_id"])]
        if not rows:
            return 0
        with self.ownership.holding(r["message_id"] for r in rows):
            return await self._resolve(rows)

    async def _resolve(self, rows: list) -> int:
        finished: list[tuple[Job, Finish]] = []
        resend: list[Job] = []
        unreachable: list[uuid.UUID] = []
        for row in rows:
            message = MessageOutbound.model_validate(row["outbound"])
            job = Job(row["tenant_id"], uuid.uuid4().hex, message, row["attempts"])
            asked = gateways_to_ask(row["submit_attempts"], self.sender.router.route_for(message).gateways)
            found: tuple[str, str] | None = None
            unsupported: str | None = None
            pending = False
            for gateway_name in asked:
                if gateway_name not in self.sender.gateways:  # no longer configured: it cannot be asked
                    unsupported = unsupported or gateway_name
                    continue
                try:
                    gateway_id = await self.sender.gateways[gateway_name].lookup(message)
                except LookupUnsupported:
                    unsupported = unsupported or gateway_name
                    continue
                except LookupPending:
                    pending = True
                    continue
                except Exception as exc:  # noqa: BLE001 - gateway unreachable: ask again later, never guess
                    log.warning("lookup failed", extra={"message_id": str(message.message_id), "gateway": gateway_name,
                                                        "error": repr(exc)})
                    pending = True
                    continue
                if gateway_id:
                    found = (gateway_name, gateway_id)
                    break
            if found:
                finished.append((job, Finish(message.message_id, "submitted", found[0], found[1], max(1, job.attempts))))
            elif pending:
                unreachable.append(message.message_id)  # one of them may have it: never resend on a guess
            elif unsupported is not None:
                # Not failed: the SMS may well have gone out. Status unknown, not resent; a
                # receipt arriving later (on a new bind, say) still moves it on.
                gateway_name = unsupported
                metrics.OUTCOME_UNKNOWN.labels(gateway_name).inc()
                finished.append((job, Finish(message.message_id, "unknown", gateway_name, None, job.attempts,
                                             "submit_outcome_unknown",
                                             "the gateway cannot confirm whether it received the message; not resent")))
            else:
                resend.append(job)  # no gateway that got an attempt has it (or none got one)
        sent, unknown = await self.sender.send(resend)
        finished += sent
        await self.publisher.publish([status_event(job, finish) for job, finish in finished])
        await self.claims.finish([f for _, f in finished])
        await self.claims.release_for_reconcile(
            [j.message.message_id for j in unknown] + unreachable, UNKNOWN_RECHECK_S
        )
        metrics.RECONCILED.inc(len(finished))
        log.info("reconciled %d stale claims (%d resent)", len(finished), len(resend))
        return len(rows) - len(unreachable)
