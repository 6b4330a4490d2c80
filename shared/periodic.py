"""One helper for the services' periodic workers: run a step every N seconds until stopped.

Each background loop (releasing held messages, advancing journeys, parking passes, claim
renewal, reconciliation, link takedowns, click flushes, the campaign launcher, the retention
job, reports' receipt sweep and A/B winner passes) is the same shape: do one pass, log
a failure and go on, wait ``interval_s`` or until stopped. :func:`run_periodically` is that
shape once, with what the hand-written loops did not share:

- a failed pass is logged with the task's name and its consecutive failures (structured
  ``extra``), and counted in ``herald_periodic_runs_total{task,outcome}``; a pass that ended
  sets ``herald_periodic_last_success_timestamp_seconds{task}`` (shared/metrics.py);
- optional jitter (spreads instances that started together) and optional exponential backoff
  after consecutive failures (``backoff_max_s``), both computed by the pure :func:`next_delay`;
- the wait ends at once when ``stop`` is set; cancelling the task cancels the pass in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from shared import metrics

log = logging.getLogger(__name__)


def next_delay(interval_s: float, failures: int = 0, *, jitter: float = 0.0, backoff_max_s: float | None = None,
               rand: Callable[[], float] = random.random) -> float:
    """How long to wait before the next pass.

    ``failures``: consecutive failed passes so far (0 after a success). Without
    ``backoff_max_s`` the interval never grows; with it, each consecutive failure doubles the
    wait, capped at ``backoff_max_s`` (never below ``interval_s``). ``jitter`` adds up to that
    fraction of the wait at random."""
    delay = interval_s
    if backoff_max_s is not None and failures > 0:
        delay = min(max(backoff_max_s, interval_s), interval_s * 2 ** min(failures, 60))
    return delay * (1 + jitter * rand()) if jitter > 0 else delay


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; True if stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return stop.is_set()
    return True


async def run_periodically(
    task: str,
    step: Callable[[], Awaitable[object]],
    interval_s: float,
    stop: asyncio.Event,
    *,
    wait_first: bool = False,
    jitter: float = 0.0,
    backoff_max_s: float | None = None,
    logger: logging.Logger = log,
    error_message: str | None = None,
    error_level: int = logging.ERROR,
    traceback: bool = True,
    rand: Callable[[], float] = random.random,
) -> None:
    """Run ``step`` every ``interval_s`` seconds until ``stop`` is set.

    ``task`` names the loop in logs and metrics. ``wait_first``: wait one interval before the
    first pass (a flush loop); otherwise the first pass runs at once. A pass that raises is
    logged (``error_message``, at ``error_level``, with the traceback unless ``traceback`` is
    False; ``logger`` keeps the caller's logger name) and the loop goes on; cancellation is
    never swallowed. Returns once ``stop`` is set (never in the middle of a pass)."""
    message = error_message or f"periodic task {task} failed"
    failures = 0
    if wait_first and await wait_or_stop(stop, next_delay(interval_s, jitter=jitter, rand=rand)):
        return
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:
            failures += 1
            metrics.PERIODIC_RUNS.labels(task, "error").inc()
            logger.log(error_level, message, exc_info=traceback,
                       extra={"task": task, "failures": failures, "error": repr(exc)})
        else:
            failures = 0
            metrics.PERIODIC_RUNS.labels(task, "ok").inc()
            metrics.PERIODIC_LAST_SUCCESS.labels(task).set(time.time())
        delay = next_delay(interval_s, failures, jitter=jitter, backoff_max_s=backoff_max_s, rand=rand)
        if await wait_or_stop(stop, delay):
            return
