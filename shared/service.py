"""The common shape of a Herald service process, used by every service's ``app.py``.

Opens the database pool and the idempotent producer, starts one batch consumer, serves
HTTP (the service's API, if it has one, on ``HERALD_HTTP_PORT``; /healthz, /readyz and
/metrics on ``HERALD_OPS_PORT``, apart from the public API), runs any extra workers, and
shuts down in reverse order on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi import FastAPI

from shared import logging as herald_logging
from shared.api import Check, ops_app
from shared.db import create_pool
from shared.kafka import BatchConsumer, Handler, Publisher, make_producer
from shared.loopwatch import install_gc_timer, tune_gc, watch_loop
from shared.runtime import http_server, run_until_stopped
from shared.settings import ConsumerSettings
from shared.topics import Topic

OPS_MAX_CONCURRENCY = 64  # probes and scrapes: a few at a time


@dataclass
class Context:
    """What the composition root hands to a service's wiring functions."""

    name: str
    settings: Any
    pool: asyncpg.Pool
    publisher: Publisher
    stack: contextlib.AsyncExitStack
    workers: dict[str, Coroutine[Any, Any, None]] = field(default_factory=dict)
    stoppers: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True)
class Lane:
    """A further consumer in the same process (its own group, topics and handler)."""

    name: str
    group_id: str
    topics: Sequence[Topic]
    handler: Handler
    bulk: bool = False  # campaign traffic: publishes through the bulk producer


MAIN_LANE = "main"  # the service's first consumer (the transactional lane where there are two)


def chosen_lanes(lanes: list[Lane], wanted: Sequence[str] | None, service: str, needs_one: bool = False) -> list[Lane]:
    """The lanes this process runs: ``wanted`` by name (HERALD_LANES), all when it is unset (None),
    none when it is empty (an ingest instance that only serves HTTP). ``needs_one``: a consumer
    service, whose /readyz would wait for partitions forever without a lane."""
    if wanted is None:
        return lanes
    if not wanted and needs_one:
        raise ValueError(f"HERALD_LANES is empty: {service} needs at least one consumer lane "
                         f"(its lanes: {', '.join(lane.name for lane in lanes)})")
    names = [lane.name for lane in lanes]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ValueError(f"HERALD_LANES names {', '.join(unknown)}, which {service} does not have "
                         f"(its lanes: {', '.join(names)})")
    return [lane for lane in lanes if lane.name in wanted]


@dataclass
class Wiring:
    handler: Handler
    app: FastAPI | None = None  # the service's own API (HERALD_HTTP_PORT); the ops routes are not on it
    lanes: list[Lane] = field(default_factory=list)


async def run_service(
    name: str,
    settings: ConsumerSettings,
    topics: Sequence[Topic],
    wire: Callable[[Context, Check], Coroutine[Any, Any, Wiring]],
    *,
    ready_needs_assignment: bool = True,
) -> int:
    """Run one service process until SIGTERM.

    ``ready_needs_assignment``: /readyz waits until the consumer owns partitions (consumer
    services); ingest, whose main job is HTTP, is ready without them.
    """
    herald_logging.configure(name, settings.log_level, settings.log_format)
    group_id = settings.consumer_group or f"{settings.topic_prefix}{name}"
    log = logging.getLogger(f"herald.{name}")
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        producer = make_producer(settings, f"herald-{name}")
        await producer.start()
        stack.push_async_callback(producer.stop)
        # Campaign traffic gets a producer of its own, so transactional records never queue
        # behind it in the client (shared/kafka.py, Publisher).
        bulk_producer = make_producer(settings, f"herald-{name}-bulk")
        await bulk_producer.start()
        stack.push_async_callback(bulk_producer.stop)
        publisher = Publisher(producer, settings.topic_prefix, name, bulk_producer)
        ctx = Context(name, settings, pool, publisher, stack)
        consumer_ref: list[BatchConsumer] = []

        async def readiness() -> dict[str, bool]:
            checks: dict[str, bool] = {}
            if ready_needs_assignment:
                checks["consumer_assigned"] = bool(consumer_ref and consumer_ref[0].assigned)
            try:
                await pool.fetchval("SELECT 1")
                checks["database"] = True
            except Exception:  # noqa: BLE001 - readiness: any failure means not ready, never a crashed probe
                checks["database"] = False
            return checks

        wiring = await wire(ctx, readiness)

        async def probe() -> None:
            # Is the database there? A handler's connection error while it answers is the
            # batch's own, and bounded (shared/kafka.py, BatchConsumer).
            await pool.fetchval("SELECT 1", timeout=5)

        main = Lane(MAIN_LANE, group_id, topics, wiring.handler)
        consumers: dict[str, Coroutine[Any, Any, None]] = {}
        stop_consumers: list[Callable[[], None]] = []
        for lane in chosen_lanes([main, *wiring.lanes], settings.lanes, name, needs_one=ready_needs_assignment):
            lane_publisher = publisher.for_bulk() if lane.bulk else publisher
            consumer = BatchConsumer(settings, name, lane.group_id, lane.topics, lane.handler, lane_publisher, probe)
            consumer_ref.append(consumer)  # readiness: the first lane this process runs
            stack.push_async_callback(consumer.close)
            consumers["consumer" if lane is main else f"consumer-{lane.name}"] = consumer.run()
            stop_consumers.append(consumer.stop_fetching)
        if settings.nice:
            os.nice(settings.nice)  # campaign-lane instances: the kernel runs transactional work first
        # Event-loop lag and GC pauses (shared/loopwatch.py), for every service.
        install_gc_timer(name)
        tune_gc(settings.gc_gen0_threshold)
        loop_stop = asyncio.Event()
        ctx.workers["loop-watch"] = watch_loop(name, stop=loop_stop)
        ctx.stoppers.append(loop_stop.set)
        # The ops port answers probes and scrapes even while the API is at its concurrency limit.
        servers = {"ops": http_server(ops_app(name, readiness), settings.http_host, settings.ops_port,
                                      settings.shutdown_timeout_s, OPS_MAX_CONCURRENCY)}
        if wiring.app is not None:
            servers["http"] = http_server(wiring.app, settings.http_host, settings.http_port,
                                          settings.shutdown_timeout_s, settings.http_max_concurrency)

        def stop_http() -> None:
            for server in servers.values():
                server.should_exit = True

        log.info("%s starting", name, extra={"port": settings.http_port if wiring.app is not None else None,
                                             "ops_port": settings.ops_port, "group": group_id})
        return await run_until_stopped(
            {**{k: server.serve() for k, server in servers.items()}, **consumers, **ctx.workers},
            [*stop_consumers, *ctx.stoppers, stop_http],
            settings.shutdown_timeout_s,
        )
    return 0
