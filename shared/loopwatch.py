"""Event-loop health for every service: how late the loop runs a timer (a stall: a long
synchronous stretch or a saturated CPU) and how long the garbage collector pauses it.

Both are Prometheus histograms (``herald_event_loop_lag_seconds``,
``herald_gc_pause_seconds{generation}``); a single-threaded asyncio service answers a request
no faster than its loop gets back to it, so these explain latency outliers that no handler
metric shows.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from shared.metrics import GC_PAUSE_SECONDS, LOOP_LAG_SECONDS

_gc_started: list[float] = []


def tune_gc(gen0_threshold: int) -> None:
    """Call once start-up is done: move everything allocated so far (modules, pydantic schemas,
    phonenumbers' metadata: hundreds of thousands of long-lived objects) out of the collector's
    reach with ``gc.freeze()``, and collect the young generation less often. A full collection
    then walks only what the service allocated since, instead of pausing for up to a second."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


def install_gc_timer(service: str) -> None:
    """Time every collection (once per process)."""
    children = {g: GC_PAUSE_SECONDS.labels(service, str(g)) for g in (0, 1, 2)}

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _gc_started.append(time.perf_counter())
        elif _gc_started:
            children.get(info.get("generation", 2), children[2]).observe(time.perf_counter() - _gc_started.pop())

    if not any(getattr(c, "__herald__", False) for c in gc.callbacks):
        callback.__herald__ = True  # type: ignore[attr-defined]
        gc.callbacks.append(callback)


async def watch_loop(service: str, interval_s: float = 0.1, stop: asyncio.Event | None = None) -> None:
    """Sleep ``interval_s`` again and again; observe how much later than asked the loop woke."""
    lag = LOOP_LAG_SECONDS.labels(service)
    stop = stop or asyncio.Event()
    while not stop.is_set():
        asked = time.perf_counter()
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
        lag.observe(max(0.0, time.perf_counter() - asked - interval_s))
