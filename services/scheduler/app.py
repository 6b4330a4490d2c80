"""scheduler's composition root."""

from __future__ import annotations

from services.scheduler.erasure import scheduler_eraser
from services.scheduler.handlers import AcceptedHandler, CommandHandler, FactsRepository, Timer
from services.scheduler.journeys.handlers import JourneyEventsHandler, JourneyTimer
from services.scheduler.journeys.limits import JourneyLimiter
from services.scheduler.journeys.repository import JourneyRepository
from services.scheduler.settings import SchedulerSettings
from services.scheduler.subject_access import scheduler_gatherer
from shared.api import Check
from shared.erasure import ErasureKeys
from shared.erasure_store import ErasureHandler
from shared.service import Context, Lane, Wiring, run_service
from shared.subject_access_store import GatherHandler
from shared.topics import ACCEPTED, ACCEPTED_BULK, CONTACT_EVENTS, ERASURES, MESSAGE_COMMANDS, SUBJECT_ACCESS


async def wire(ctx: Context, readiness: Check) -> Wiring:
    settings: SchedulerSettings = ctx.settings
    keys = settings.erasure_keyring()
    await check_erasure_keys(ctx.pool, keys)
    facts = FactsRepository(ctx.pool, erasure_keys=keys)
    timer = Timer(facts, ctx.publisher, settings.timer_interval_s, settings.timer_batch)
    ctx.workers["timer"] = timer.run()
    ctx.stoppers.append(timer.stop)
    # Campaigns get their own lane (and consumer group): transactional messages never wait behind them.
    bulk_group = f"{settings.consumer_group or settings.topic_prefix + 'scheduler'}.bulk"
    bulk = Lane("bulk", bulk_group, [ACCEPTED_BULK], AcceptedHandler(facts), bulk=True)
    # Journeys (docs/journeys.md): a lane on contact events and a timer that advances due runs.
    journeys = JourneyRepository(ctx.pool)
    journey_timer = JourneyTimer(journeys, ctx.publisher, settings.journey_timer_interval_s, settings.journey_timer_batch,
                                 limiter=JourneyLimiter(ctx.pool, settings.rate_limit_messages_per_minute))
    ctx.workers["journey-timer"] = journey_timer.run()
    ctx.stoppers.append(journey_timer.stop)
    base_group = settings.consumer_group or settings.topic_prefix + "scheduler"
    journey_lane = Lane("journeys", f"{base_group}.journeys", [CONTACT_EVENTS], JourneyEventsHandler(journeys))
    # Clients' cancel and reschedule commands for held messages (DELETE/PATCH /v1/messages/{id}).
    commands = Lane("commands", f"{base_group}.commands", [MESSAGE_COMMANDS], CommandHandler(ctx.pool, ctx.publisher))
    # Erasures (docs/data-map.md): held messages, journey runs and releases of an erased number.
    erasures = Lane("erasures", f"{base_group}.erasures", [ERASURES],
                    ErasureHandler(ctx.pool, "scheduler", scheduler_eraser(ctx.publisher)))
    # Subject-access exports (docs/data-map.md): held messages, journey runs and releases of a number.
    subject_access = Lane("subject-access", f"{base_group}.subject-access", [SUBJECT_ACCESS],
                          GatherHandler(ctx.pool, "scheduler", scheduler_gatherer, settings.subject_access_part_bytes))
    return Wiring(handler=AcceptedHandler(facts),
                  lanes=[bulk, journey_lane, commands, erasures, subject_access])


async def check_erasure_keys(pool, keys: ErasureKeys) -> None:
    """Refuse to start without a key for every version of the stored hashes: the scheduler would
    send marketing to erased numbers it can no longer recognise."""
    versions = {r["v"] for r in await pool.fetch(
        "SELECT DISTINCT split_part(phone_hash, ':', 1) AS v FROM shared_suppression_hashes WHERE strpos(phone_hash, ':') > 0")}
    if missing := sorted(v for v in versions if not keys.knows(v)):
        raise SystemExit("scheduler: refusing to start: suppression_hashes holds hashes under erasure key versions "
                         f"{missing} that HERALD_ERASURE_KEYS lacks (erased numbers would get marketing)")


async def main(settings: SchedulerSettings | None = None) -> int:
    settings = settings or SchedulerSettings()
    if problems := settings.erasure_key_problems():
        raise SystemExit("scheduler: refusing to start: " + "; ".join(problems))
    return await run_service("scheduler", settings, [ACCEPTED], wire)
