"""Parked messages: refused by every gateway of their route for longer than the retry budget.

The Sender hands such a message to the ``Parker`` instead of failing it: its claim row becomes
'parked' (durable), and the consumer commits and moves on, so one dead route blocks no
partition. The ``ParkingLoop`` (every instance; rows are taken with FOR UPDATE SKIP LOCKED)
resends parked messages when they are due and their route has a gateway that is not skipped,
once at a time, with a backoff; a gateway whose circuit closes again makes its parked
messages due at once. A parked message ends ``expired`` at the end of its validity, or
``failed`` (``gateway_unavailable_max_age``) when its maximum age passes.

Nothing is sent twice: only refusals (the gateway did not take the message) are parked, and a
taken row is an ordinary claim of the taker (leased, renewed, and resolved by the reconciler,
which asks the gateway first, if the taker dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime

from services.dispatcher import metrics
from services.dispatcher.domain.health import State
from services.dispatcher.domain.parking import ParkingPolicy, end_at, on_refusal, woken
from services.dispatcher.gateways.base import Refused
from services.dispatcher.handlers import UNKNOWN_RECHECK_S, Job, Sender, ownership_of, status_event
from services.dispatcher.repository import ClaimRepository, Finish, ParkingRepository, ParkItem
from services.dispatcher.settings import DispatcherSettings
from shared.contracts import MessageOutbound, utcnow
from shared.kafka import Publisher
from shared.periodic import run_periodically
from shared.statuses import MessageType

log = logging.getLogger(__name__)


def policy_from(settings: DispatcherSettings) -> ParkingPolicy:
    return ParkingPolicy(
        max_age_s={
            MessageType.TRANSACTIONAL.value: settings.parking_max_age_transactional_s,
            MessageType.MARKETING.value: settings.parking_max_age_marketing_s,
        },
        tenant_max_age_s=dict(settings.parking_tenant_max_age_s or {}),
        retry_base_s=settings.parking_retry_base_s,
        retry_cap_s=settings.parking_retry_cap_s,
    )


class Parker:
    """Decides whether a refused message may wait, and parks it (batched, before the commit)."""

    def __init__(
        self, repository: ParkingRepository, policy: ParkingPolicy, owner: str,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.repository = repository
        self.owner = owner  # this instance's claims are the ones it may park
        self.policy = policy
        self.wall_clock = wall_clock
        self._rounds: dict[uuid.UUID, int] = {}  # parks so far of the messages being resent

    def hold(self, job: Job, gateway: str, refusal: Refused, attempts: int) -> ParkItem | None:
        mid = job.message.message_id
        park = on_refusal(self.policy, job.tenant, job.message, self._rounds.get(mid, 0), self.wall_clock())
        if park is None:
            return None
        reason = f"parked after {attempts} attempts: {refusal.code} {refusal.message}"[:500]
        return ParkItem(mid, park.retry_at, gateway, attempts, "parked", reason)

    async def park(self, items: list[ParkItem]) -> None:
        parked = await self.repository.park(self.owner, items)
        for item in items:
            self._rounds.pop(item.message_id, None)
            metrics.PARKINGS.labels(item.gateway or "none").inc()
        log.warning("parked %d messages refused past the retry budget", parked,
                    extra={"gateways": sorted({i.gateway or "none" for i in items})})

    def resending(self, rows: Iterable[tuple[uuid.UUID, int]]) -> None:
        self._rounds.update(rows)

    def done(self, ids: Iterable[uuid.UUID]) -> None:
        for mid in ids:
            self._rounds.pop(mid, None)


class ParkingLoop:
    """Resends due parked messages whose route can take them; ends those past their deadline."""

    def __init__(
        self,
        parked: ParkingRepository,
        claims: ClaimRepository,
        sender: Sender,
        parker: Parker,
        publisher: Publisher,
        settings: DispatcherSettings,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.parked = parked
        self.claims = claims
        self.sender = sender.one_shot()
        self.parker = parker
        self.publisher = publisher
        self.settings = settings
        self.wall_clock = wall_clock
        self._states: dict[str, str] = {}
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await run_periodically("parking", self.pass_once, self.settings.parking_interval_s, self._stop,
                               logger=log, error_message="parking pass failed")

    async def pass_once(self) -> int:
        """Wake, resend and end what is due; returns how many parked messages were taken."""
        await self.wake()
        taken = 0
        while not self._stop.is_set():
            n = await self.resend_once(self.settings.parking_batch_size)
            taken += n
            if n < self.settings.parking_batch_size:
                break
        count, oldest = await self.parked.stats()
        metrics.PARKED.set(count)
        metrics.PARKED_OLDEST.set(oldest)
        return taken

    async def wake(self) -> None:
        current = {name: health.state.value for name, health in self.sender.health.items()}
        back = woken(self._states, current)
        self._states = current
        if back:
            n = await self.parked.wake(sorted(back))
            if n:
                log.info("gateways %s closed again: %d parked messages due now", sorted(back), n)
        # A skipped gateway whose cooldown is over (half-open) gets one parked message as a probe:
        # accepted, its circuit closes and the rest follow; refused, it stays skipped.
        for name, health in self.sender.health.items():
            if health.state is not State.CLOSED and self.sender.available(name):
                await self.parked.wake([name], limit=1)

    async def resend_once(self, limit: int) -> int:
        ownership = ownership_of(self.settings)
        rows = await self.parked.take_due(ownership.owner, self.settings.claim_lease_s, limit)
        if not rows:
            return 0
        # Taken rows are claims of this process start: their leases are renewed while it works on them.
        with ownership.holding([r["message_id"] for r in rows]):
            return await self._resend(rows, ownership.owner)

    async def _resend(self, rows: list, owner: str) -> int:
        now = self.wall_clock()
        ended: list[tuple[Job, Finish]] = []
        waiting: list[ParkItem] = []
        resend: dict[bool, list[Job]] = {True: [], False: []}
        for row in rows:
            message = MessageOutbound.model_validate(row["outbound"])
            job = Job(row["tenant_id"], uuid.uuid4().hex, message, row["attempts"])
            end = end_at(self.parker.policy, job.tenant, message, now)
            if end is not None:
                ended.append((job, Finish(message.message_id, end.state, row["gateway"], None, row["attempts"],
                                          end.reason_code, end.reason)))
                metrics.UNPARKED.labels("expired" if end.state == "expired" else "max_age").inc()
                continue
            route = self.sender.router.route_for(message)
            if not any(self.sender.available(g) for g in route.gateways):
                # Every gateway of its route is still skipped (circuit open): wait, unsent.
                park = on_refusal(self.parker.policy, job.tenant, message, row["park_rounds"], now)
                if park is not None:
                    waiting.append(ParkItem(message.message_id, park.retry_at, None, row["attempts"]))
                    continue
            resend[message.type is MessageType.TRANSACTIONAL].append(job)
            self.parker.resending([(message.message_id, row["park_rounds"])])
        finished = list(ended)
        unknown: list[Job] = []
        try:
            for priority in (True, False):
                if resend[priority]:
                    sent, lost = await self.sender.send(resend[priority], priority=priority)
                    finished += sent
                    unknown += lost
                    metrics.UNPARKED.labels("resent").inc(len(resend[priority]))
            await self.publisher.publish([status_event(job, finish) for job, finish in finished])
            await self.claims.finish([f for _, f in finished])
            await self.claims.release_for_reconcile([j.message.message_id for j in unknown], UNKNOWN_RECHECK_S)
            await self.parked.park(owner, waiting)
        except BaseException:
            # Whatever is still claimed here may or may not have been sent: the reconciler asks the
            # gateway before it resends anything.
            with contextlib.suppress(Exception):
                await self.claims.release_for_reconcile([r["message_id"] for r in rows], 0)
            raise
        finally:
            self.parker.done(j.message.message_id for js in resend.values() for j in js)
        log.info("parking: %d taken, %d resent, %d ended, %d still waiting", len(rows),
                 len(resend[True]) + len(resend[False]), len(ended), len(waiting))
        return len(rows)
