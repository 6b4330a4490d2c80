"""Retention jobs' adapter: the lease that lets one instance run a job once per period, the
bounded batches every deletion goes in, day partitions, and the metrics (docs/operations.md,
"Retention"). What expires when is decided in shared/retention.py.

Every instance of a service runs a ``RetentionJob``; each checks the job's row of
``retention_runs`` now and then, and the one that takes the lease (free, and the last success a
period old) runs the service's tasks. Each batch is its own short transaction, so a run never
holds locks for long and a crash loses at most one batch. A run that does not finish within
its budget stops, releases the lease and is not counted as a success: the next check continues
where it stopped, and herald_retention_last_success_timestamp_seconds falls behind (the
HeraldRetentionBehind alert).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared import retention
from shared.metrics import (
    RETENTION_LAST_SUCCESS,
    RETENTION_PARTITIONS,
    RETENTION_ROWS,
    RETENTION_RUN_SECONDS,
    RETENTION_RUNS,
)
from shared.periodic import run_periodically
from shared.settings import RetentionSettings

log = logging.getLogger(__name__)
DDL_LOCK_TIMEOUT = "1s"  # a partition DDL waits this long for its lock, then the run retries later


class Behind(Exception):
    """The run's budget ran out with rows still to expire."""


@dataclass
class Run:
    """What a task gets: the pool, the run's clock and budget, and the counts it adds to."""

    pool: asyncpg.Pool
    service: str
    now: datetime
    deadline: float  # time.monotonic()
    batch_rows: int
    counts: dict[str, int] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)

    def add(self, table: str, rows: int) -> None:
        if rows:
            self.counts[table] = self.counts.get(table, 0) + rows
            RETENTION_ROWS.labels(self.service, table).inc(rows)

    def check_budget(self) -> None:
        if time.monotonic() > self.deadline:
            raise Behind()

    async def tenant_overrides(self, kind: str) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT tenant_id, retention FROM shared_tenant_settings WHERE retention <> '{}'::jsonb")
        return retention.tenant_overrides(((r["tenant_id"], r["retention"]) for r in rows), kind)

    async def cutoffs(self, kind: str, default_days: float) -> retention.Cutoffs:
        return retention.cutoffs(self.now, default_days, await self.tenant_overrides(kind))

    async def batches(self, table: str, sql: str, *args: Any) -> int:
        """Run ``sql`` (a statement that expires at most ``$1`` rows and returns how many, with
        ``args`` as $2...) until it expires fewer than a batch; each run is its own transaction."""
        total = 0
        while True:
            self.check_budget()
            done = await self.pool.fetchval(sql, self.batch_rows, *args)
            done = int(done or 0)
            self.add(table, done)
            total += done
            if done < self.batch_rows:
                return total

    async def expire_by_age(self, table: str, column: str, limits: retention.Cutoffs,
                            where: str = "TRUE", tenant_column: str = "tenant_id") -> int:
        """Delete rows of ``table`` whose ``column`` is older than their tenant's cutoff, in
        batches (by ctid: the rows the index range scan found first)."""
        template = (
            f"WITH gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {column} < $2 AND {{tenant}} AND ({where}) LIMIT $1)) RETURNING 1)"
            " SELECT count(*) FROM gone"
        )
        own = list(limits.tenants)
        total = await self.batches(table, template.format(tenant=f"{tenant_column} <> ALL($3::text[])"),
                                   limits.default, own)
        for tenant_id, cutoff in sorted(limits.tenants.items()):
            total += await self.batches(table, template.format(tenant=f"{tenant_column} = $3"), cutoff, tenant_id)
        return total

    async def expire_older_than(self, table: str, column: str, cutoff: datetime, where: str = "TRUE") -> int:
        """Delete rows of ``table`` whose ``column`` is older than ``cutoff`` (no tenant ages)."""
        return await self.batches(
            table,
            f"WITH gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {column} < $2 AND ({where}) LIMIT $1)) RETURNING 1)"
            " SELECT count(*) FROM gone",
            cutoff,
        )


Task = Callable[[Run], Awaitable[None]]


async def day_partitions(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 AND p.relnamespace = c.relnamespace"
        " AND p.relnamespace = current_schema()::regnamespace",
        table,
    )
    return [r["relname"] for r in rows]


async def maintain_day_partitions(run: Run, table: str, column: str, ahead_days: int, oldest_kept: datetime) -> None:
    """Create the partitions of today and the next ``ahead_days`` days (moving any rows of those
    days out of the default partition), then drop the partitions every row of which is older
    than ``oldest_kept``, and delete such rows from the default partition."""
    default = f"{table}_default"
    existing = await day_partitions(run.pool, table)
    for day in retention.partitions_to_create(table, run.now, ahead_days, existing):
        run.check_budget()
        name = retention.partition_name(table, day)
        start, end = retention.day_start(day), retention.day_start(day + timedelta(days=1))
        async with run.pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
            await conn.execute(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            if default in existing:
                await conn.execute(
                    f"WITH moved AS (DELETE FROM {default} WHERE {column} >= $1 AND {column} < $2 RETURNING *)"
                    f" INSERT INTO {name} SELECT * FROM moved", start, end,
                )
            await conn.execute(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{start.isoformat()}')"
                               f" TO ('{end.isoformat()}')")
        run.partitions[f"{table}:created"] = run.partitions.get(f"{table}:created", 0) + 1
        RETENTION_PARTITIONS.labels(run.service, table, "created").inc()
    for name in retention.partitions_to_drop(table, existing, oldest_kept):
        run.check_budget()
        async with run.pool.acquire() as conn, conn.transaction():
            # A brief ACCESS EXCLUSIVE lock on the parent: bounded, so inserts never queue behind
            # it for long; a drop that cannot get its lock is retried by the next run.
            await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
            rows = await conn.fetchval("SELECT reltuples::bigint FROM pg_class WHERE relname = $1", name)
            await conn.execute(f"DROP TABLE {name}")
        run.partitions[f"{table}:dropped"] = run.partitions.get(f"{table}:dropped", 0) + 1
        RETENTION_PARTITIONS.labels(run.service, table, "dropped").inc()
        log.info("partition dropped", extra={"table": table, "partition": name, "estimated_rows": max(0, rows or 0)})
    if default in existing:
        await run.expire_older_than(default, column, oldest_kept)


def instance_id(service: str) -> str:
    return f"{service}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class RetentionJob:
    """Runs ``tasks`` (in order) once per interval, in one instance of the service at a time."""

    def __init__(self, pool: asyncpg.Pool, service: str, settings: RetentionSettings, tasks: Sequence[Task],
                 owner: str | None = None) -> None:
        self.pool = pool
        self.service = service
        self.job = service
        self.settings = settings
        self.tasks = list(tasks)
        self.owner = owner or instance_id(service)
        self.interval = timedelta(seconds=settings.retention_interval_s)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def lease_s(self) -> float:
        return self.settings.retention_run_budget_s + 120.0

    async def _state(self) -> asyncpg.Record:
        await self.pool.execute("INSERT INTO retention_runs (job) VALUES ($1) ON CONFLICT DO NOTHING", self.job)
        return await self.pool.fetchrow(
            "SELECT last_success_at, lease_until, now() AS now FROM retention_runs WHERE job = $1", self.job
        )

    async def _take_lease(self) -> datetime | None:
        """The run's start (the database's clock) if this instance got the lease, else None."""
        return await self.pool.fetchval(
            "UPDATE retention_runs SET owner = $2, lease_until = now() + make_interval(secs => $3), started_at = now()"
            " WHERE job = $1 AND (lease_until IS NULL OR lease_until < now())"
            " AND (last_success_at IS NULL OR last_success_at <= now() - make_interval(secs => $4))"
            " RETURNING started_at",
            self.job, self.owner, self.lease_s, self.settings.retention_interval_s,
        )

    async def run_once(self) -> str:
        """Run the job if it is due and free: 'success', 'behind' (budget spent), 'failed', or
        'skipped' (not due, or another instance holds it)."""
        state = await self._state()
        if state["last_success_at"] is not None:
            RETENTION_LAST_SUCCESS.labels(self.service).set(state["last_success_at"].timestamp())
        if not retention.due(state["last_success_at"], state["now"], self.interval):
            return "skipped"
        if state["lease_until"] is not None and state["lease_until"] > state["now"]:
            return "skipped"
        started_at = await self._take_lease()
        if started_at is None:
            return "skipped"
        began = time.monotonic()
        run = Run(self.pool, self.service, started_at.astimezone(UTC), began + self.settings.retention_run_budget_s,
                  self.settings.retention_batch_rows)
        outcome = "success"
        try:
            for task in self.tasks:
                await task(run)
        except Behind:
            outcome = "behind"
        except Exception:
            outcome = "failed"
            log.exception("retention run failed", extra={"job": self.job, "counts": run.counts})
        duration = time.monotonic() - began
        RETENTION_RUN_SECONDS.labels(self.service).observe(duration)
        RETENTION_RUNS.labels(self.service, outcome).inc()
        if outcome == "success":
            await self.pool.execute(
                "UPDATE retention_runs SET lease_until = NULL, last_success_at = started_at, last_duration_s = $3,"
                " last_counts = $4 WHERE job = $1 AND owner = $2",
                self.job, self.owner, duration, {**run.counts, **run.partitions},
            )
            RETENTION_LAST_SUCCESS.labels(self.service).set(started_at.timestamp())
            log.info("retention run done", extra={"job": self.job, "seconds": round(duration, 3),
                                                  "counts": run.counts, "partitions": run.partitions})
        else:
            await self.pool.execute(
                "UPDATE retention_runs SET lease_until = NULL WHERE job = $1 AND owner = $2", self.job, self.owner
            )
            if outcome == "behind":
                log.warning("retention run stopped at its budget, continuing", extra={
                    "job": self.job, "budget_s": self.settings.retention_run_budget_s, "counts": run.counts})
        return outcome

    async def run(self) -> None:
        check_s = min(60.0, max(1.0, self.settings.retention_interval_s / 10))
        await run_periodically("retention", self.catch_up, check_s, self._stop, logger=log,
                               error_message="retention check failed")

    async def catch_up(self) -> None:
        """One run, and more at once while a run stops at its budget with more to expire."""
        while await self.run_once() == "behind" and not self._stop.is_set():
            pass


def add_retention_job(ctx: Any, tasks: Sequence[Task]) -> RetentionJob | None:
    """Run the service's retention job in this instance (a shared.service.Context's workers)."""
    if not ctx.settings.retention_enabled:
        return None
    job = RetentionJob(ctx.pool, ctx.name, ctx.settings, tasks)
    ctx.workers["retention"] = job.run()
    ctx.stoppers.append(job.stop)
    return job
