"""Claim, throttle, submit, retry: the dispatcher's batch handler and its reconciler."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.dispatcher import metrics
from services.dispatcher.domain.retry import backoff
from services.dispatcher.domain.throttle import TokenBucket
from services.dispatcher.gateways.base import Gateway, LookupUnsupported, Outcome, Refused, Submitted, Unknown
from services.dispatcher.repository import ClaimRepository, Finish
from services.dispatcher.settings import DispatcherSettings
from shared.contracts import MessageOutbound, MessageStatusChanged, MessageStatusEvent, derived_event_id, utcnow
from shared.kafka import Incoming, Outgoing, Publisher
from shared.statuses import Status
from shared.topics import STATUS

log = logging.getLogger(__name__)
UNKNOWN_RECHECK_S = 15.0


@dataclass(frozen=True, slots=True)
class Job:
    tenant: str
    trace_id: str
    message: MessageOutbound
    attempts: int = 0


def status_event(job: Job, finish: Finish) -> Outgoing:
    status = Status.SUBMITTED if finish.state == "submitted" else Status.FAILED
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
    )
    event = MessageStatusEvent(
        event_id=derived_event_id(job.message.message_id, status),
        tenant=job.tenant,
        trace_id=job.trace_id,
        payload=payload,
    )
    return Outgoing(STATUS, str(job.message.message_id), event)


class Sender:
    """Submits jobs through the throttle, retrying refusals that may pass later."""

    def __init__(
        self,
        gateways: dict[str, Gateway],
        settings: DispatcherSettings,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.gateways = gateways
        self.order = [g.name for g in settings.gateways]
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        now = clock()
        self.buckets = {g.name: TokenBucket.start(g.rate_per_s, now, g.burst) for g in settings.gateways}
        self.chunk = {g.name: g.batch_size for g in settings.gateways}

    def route(self, message: MessageOutbound) -> str:
        return self.order[0]  # routing rules and failover come with the gateways work

    async def _throttled(self, gateway: str, jobs: list[Job]) -> list[Outcome]:
        bucket, size = self.buckets[gateway], self.chunk[gateway]
        tasks = []
        for i in range(0, len(jobs), size):
            chunk = jobs[i : i + size]
            wait = bucket.reserve(sum(j.message.segments for j in chunk), self.clock())
            if wait > 0:
                metrics.THROTTLE_WAIT.labels(gateway).observe(wait)
                await self.sleep(wait)
            tasks.append(asyncio.ensure_future(self.gateways[gateway].submit_many([j.message for j in chunk])))
        results = await asyncio.gather(*tasks)
        return [o for r in results for o in r]

    async def send(self, jobs: list[Job]) -> tuple[list[tuple[Job, Finish]], list[Job]]:
        """Returns (finished jobs with their record, jobs whose outcome is unknown)."""
        finished: list[tuple[Job, Finish]] = []
        unknown: list[Job] = []
        deadline = self.clock() + self.settings.retry_budget_s
        pending = jobs
        round_ = 0
        while pending:
            round_ += 1
            by_gateway: dict[str, list[Job]] = defaultdict(list)
            for job in pending:
                by_gateway[self.route(job.message)].append(job)
            retry: list[Job] = []
            for gateway, group in by_gateway.items():
                started = self.clock()
                outcomes = await self._throttled(gateway, group)
                metrics.SUBMIT_SECONDS.labels(gateway).observe(self.clock() - started)
                for job, outcome in zip(group, outcomes, strict=True):
                    attempts = job.attempts + 1
                    if isinstance(outcome, Submitted):
                        metrics.SUBMISSIONS.labels(gateway, "submitted").inc()
                        finished.append(
                            (job, Finish(job.message.message_id, "submitted", gateway, outcome.gateway_message_id, attempts,
                                         part_ids=outcome.part_ids))
                        )
                    elif isinstance(outcome, Unknown):
                        metrics.SUBMISSIONS.labels(gateway, "unknown").inc()
                        log.warning("submission outcome unknown", extra={"message_id": str(job.message.message_id), "error": outcome.message})
                        unknown.append(Job(job.tenant, job.trace_id, job.message, attempts))
                    elif outcome.retriable and attempts < self.settings.retry_max_attempts and self.clock() < deadline:
                        metrics.SUBMISSIONS.labels(gateway, "retry").inc()
                        retry.append(Job(job.tenant, job.trace_id, job.message, attempts))
                    else:
                        metrics.SUBMISSIONS.labels(gateway, "failed").inc()
                        code = outcome.code if not outcome.retriable else "retries_exhausted"
                        reason = outcome.message if not outcome.retriable else f"gave up after {attempts} attempts: {outcome.code} {outcome.message}"
                        finished.append((job, Finish(job.message.message_id, "failed", gateway, None, attempts, code, reason[:500])))
            pending = retry
            if pending:
                delay = min(backoff(round_, self.settings.retry_base_s, self.settings.retry_cap_s), max(0.0, deadline - self.clock()))
                log.info("retrying %d submissions in %.1fs", len(pending), delay)
                await self.sleep(delay)
        return finished, unknown


class OutboundHandler:
    def __init__(self, claims: ClaimRepository, sender: Sender, settings: DispatcherSettings) -> None:
        self.claims = claims
        self.sender = sender
        self.settings = settings

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        jobs = {}
        for item in batch:
            message = item.event.payload
            assert isinstance(message, MessageOutbound)
            jobs.setdefault(message.message_id, Job(item.event.tenant, item.event.trace_id, message))
        claims = await self.claims.claim(
            self.settings.instance_id,
            self.settings.claim_lease_s,
            [(mid, j.tenant, j.message.model_dump_json()) for mid, j in jobs.items()],
        )
        outgoing: list[Outgoing] = []
        fresh: list[Job] = []
        for mid, job in jobs.items():
            claim = claims[mid]
            if claim.fresh:
                fresh.append(job)
            elif claim.state in ("submitted", "failed"):
                # Seen before and finished: publish its status again (same event id) in
                # case the first publish was lost in a crash.
                finish = Finish(mid, claim.state, claim.gateway, claim.gateway_message_id, claim.attempts,
                                claim.reason_code, claim.reason, tuple(claim.gateway_part_ids or ()))
                outgoing.append(status_event(job, finish))
            else:
                metrics.SKIPPED_CLAIMED.inc()  # another instance holds it, or the reconciler will
        finished, unknown = await self.sender.send(fresh)
        await self.claims.finish([f for _, f in finished])
        await self.claims.release_for_reconcile([j.message.message_id for j in unknown], UNKNOWN_RECHECK_S)
        outgoing += [status_event(job, finish) for job, finish in finished]
        return outgoing


class Reconciler:
    """Resolves claims whose owner died or whose outcome is unknown, asking the gateway first."""

    def __init__(
        self,
        claims: ClaimRepository,
        sender: Sender,
        publisher: Publisher,
        settings: DispatcherSettings,
    ) -> None:
        self.claims = claims
        self.sender = sender
        self.publisher = publisher
        self.settings = settings
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                while await self.reconcile_once() and not self._stop.is_set():
                    pass
            except Exception:
                log.exception("reconcile pass failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.reconcile_interval_s)
            except TimeoutError:
                pass

    async def reconcile_once(self, limit: int = 200) -> int:
        rows = await self.claims.take_stale(self.settings.instance_id, self.settings.claim_lease_s, limit)
        if not rows:
            return 0
        finished: list[tuple[Job, Finish]] = []
        resend: list[Job] = []
        unreachable: list[uuid.UUID] = []
        for row in rows:
            message = MessageOutbound.model_validate(row["outbound"])
            job = Job(row["tenant_id"], uuid.uuid4().hex, message, row["attempts"])
            gateway_name = self.sender.route(message)
            try:
                found = await self.sender.gateways[gateway_name].lookup(message)
            except LookupUnsupported:
                finished.append((job, Finish(message.message_id, "failed", gateway_name, None, job.attempts,
                                             "submit_outcome_unknown",
                                             "the gateway cannot confirm whether it received the message; not resent to avoid a duplicate")))
                continue
            except Exception as exc:  # gateway unreachable: ask again later, never guess
                log.warning("lookup failed", extra={"message_id": str(message.message_id), "error": repr(exc)})
                unreachable.append(message.message_id)
                continue
            if found:
                finished.append((job, Finish(message.message_id, "submitted", gateway_name, found, max(1, job.attempts))))
            else:
                resend.append(job)
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
