"""scheduler's composition root."""

from __future__ import annotations

from services.scheduler.handlers import AcceptedHandler, CommandHandler, FactsRepository, Timer
from shared.ratelimit import RateLimiter
from services.scheduler.journeys.handlers import JourneyEventsHandler, JourneyTimer
from services.scheduler.journeys.repository import JourneyRepository
from services.scheduler.settings import SchedulerSettings
from shared.api import Check
from shared.service import Context, Lane, Wiring, run_service
from shared.topics import ACCEPTED, ACCEPTED_BULK, CONTACT_EVENTS, MESSAGE_COMMANDS


async def wire(ctx: Context, readiness: Check) -> Wiring:
    settings: SchedulerSettings = ctx.settings
    facts = FactsRepository(ctx.pool)
    timer = Timer(facts, ctx.publisher, settings.timer_interval_s, settings.timer_batch)
    ctx.workers["timer"] = timer.run()
    ctx.stoppers.append(timer.stop)
    # Campaigns get their own lane (and consumer group): transactional messages never wait behind them.
    bulk_group = f"{settings.consumer_group or settings.topic_prefix + 'scheduler'}.bulk"
    bulk = Lane("bulk", bulk_group, [ACCEPTED_BULK], AcceptedHandler(facts), bulk=True)
    # Journeys (docs/journeys.md): a lane on contact events and a timer that advances due runs.
    journeys = JourneyRepository(ctx.pool)
    journey_timer = JourneyTimer(journeys, ctx.publisher, settings.journey_timer_interval_s, settings.journey_timer_batch,
                                 allowed_number_types=settings.allowed_number_types,
                                 limiter=RateLimiter(ctx.pool, settings.rate_limit_requests_per_minute,
                                                     settings.rate_limit_messages_per_minute, lease=False))
    ctx.workers["journey-timer"] = journey_timer.run()
    ctx.stoppers.append(journey_timer.stop)
    base_group = settings.consumer_group or settings.topic_prefix + "scheduler"
    journey_lane = Lane("journeys", f"{base_group}.journeys", [CONTACT_EVENTS], JourneyEventsHandler(journeys))
    # Clients' cancel and reschedule commands for held messages (DELETE/PATCH /v1/messages/{id}).
    commands = Lane("commands", f"{base_group}.commands", [MESSAGE_COMMANDS], CommandHandler(ctx.pool, ctx.publisher))
    return Wiring(handler=AcceptedHandler(facts), lanes=[bulk, journey_lane, commands])


async def main(settings: SchedulerSettings | None = None) -> int:
    settings = settings or SchedulerSettings()
    return await run_service("scheduler", settings, [ACCEPTED], wire)
