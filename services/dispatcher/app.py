"""dispatcher's composition root: gateways, claims, throttle, consumer and reconciler."""

from __future__ import annotations

from services.dispatcher.erasure import dispatcher_eraser
from services.dispatcher.gateways import build_gateway
from services.dispatcher.gateways.sandbox import SANDBOX, SandboxGateway
from services.dispatcher.handlers import OutboundHandler, Reconciler, Sender, ownership_of
from services.dispatcher.parking import Parker, ParkingLoop, policy_from
from services.dispatcher.repository import CampaignStates, ClaimRepository, ParkingRepository, TenantStates
from services.dispatcher.retention import tasks as retention_tasks
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.sink import KafkaSink
from services.dispatcher.subject_access import dispatcher_gatherer
from services.dispatcher.throttle import LocalThrottle, PostgresThrottle, Throttle
from shared.api import Check
from shared.erasure_store import ErasureHandler
from shared.retention_store import add_retention_job
from shared.service import Context, Lane, Wiring, run_service
from shared.subject_access_store import GatherHandler
from shared.topics import ERASURES, OUTBOUND, OUTBOUND_BULK, SUBJECT_ACCESS


async def wire(ctx: Context, readiness: Check) -> Wiring:
    settings: DispatcherSettings = ctx.settings
    gateways = {}
    sink = KafkaSink(ctx.publisher)
    for config in settings.gateways:
        gateway = build_gateway(config, sink)
        ctx.stack.push_async_callback(gateway.close)
        gateways[config.name] = gateway
    gateways[SANDBOX] = SandboxGateway(sink)  # test keys' messages (reachable by no configured route)
    claims = ClaimRepository(ctx.pool)
    limits = {g.name: (g.rate_per_s, g.burst) for g in settings.gateways}
    throttle: Throttle
    if settings.throttle_backend == "postgres":
        throttle = PostgresThrottle(ctx.pool, limits)
        await throttle.setup()
    else:
        throttle = LocalThrottle(limits)
    parked = ParkingRepository(ctx.pool)
    # Parking changes only claims this process start owns (the same owner as its lanes' claims).
    parker = Parker(parked, policy_from(settings), ownership_of(settings).owner)
    sender = Sender(gateways, settings, throttle, parker=parker)
    parking = ParkingLoop(parked, claims, sender, parker, ctx.publisher, settings)
    ctx.workers["parking"] = parking.run()
    ctx.stoppers.append(parking.stop)
    # Finished claims: texts redacted, rows deleted (services/dispatcher/retention.py).
    add_retention_job(ctx, retention_tasks(settings))
    reconciler = Reconciler(claims, sender, ctx.publisher, settings)
    ctx.workers["reconciler"] = reconciler.run()
    ctx.stoppers.append(reconciler.stop)
    bulk_group = settings.bulk_consumer_group or f"{settings.consumer_group or settings.topic_prefix + 'dispatcher'}.bulk"
    bulk = Lane("bulk", bulk_group, [OUTBOUND_BULK], OutboundHandler(claims, sender, settings, priority=False,
                                                                       campaigns=CampaignStates(ctx.pool),
                                                                       tenants=TenantStates(ctx.pool)), bulk=True)
    # Erasures (docs/data-map.md): the claims' copies of an erased number's messages.
    base_group = settings.consumer_group or settings.topic_prefix + "dispatcher"
    erasures = Lane("erasures", f"{base_group}.erasures", [ERASURES], ErasureHandler(ctx.pool, "dispatcher", dispatcher_eraser))
    # Subject-access exports (docs/data-map.md): the claims of a number's messages.
    subject_access = Lane("subject-access", f"{base_group}.subject-access", [SUBJECT_ACCESS],
                          GatherHandler(ctx.pool, "dispatcher", dispatcher_gatherer, settings.subject_access_part_bytes))
    return Wiring(handler=OutboundHandler(claims, sender, settings, priority=True, campaigns=CampaignStates(ctx.pool),
                                          tenants=TenantStates(ctx.pool)),
                  lanes=[bulk, erasures, subject_access])


async def main(settings: DispatcherSettings | None = None) -> int:
    settings = settings or DispatcherSettings()
    return await run_service("dispatcher", settings, [OUTBOUND], wire)
