"""Process lifecycle: run an HTTP server and background workers until SIGTERM/SIGINT.

On a signal every ``stopper`` is called (consumers stop fetching, finish and commit their
batch; uvicorn stops accepting and drains its requests), then the workers are awaited for
at most ``shutdown_timeout_s`` before being cancelled. If a worker dies, the process stops
with a non-zero code so its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)`` on uvloop where it is installed (faster sockets and callbacks)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def http_server(app: FastAPI, host: str, port: int, graceful_s: float, max_concurrency: int | None = None) -> _Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        limit_concurrency=max_concurrency,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(max(1, graceful_s)),
    )
    return _Server(config)


async def run_until_stopped(
    workers: dict[str, Coroutine[Any, Any, None]],
    stoppers: list[Callable[[], None]],
    shutdown_timeout_s: float,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: dict[asyncio.Task[Any], str] = {asyncio.create_task(coro, name=name): name for name, coro in workers.items()}
    stop_wait = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    for task in done:
        if task is stop_wait:
            log.info("stopping on signal")
            continue
        exc = task.exception()
        log.error("worker %s ended unexpectedly", tasks[task], exc_info=exc)
        code = 1
    for stopper in stoppers:
        stopper()
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=shutdown_timeout_s)
        for task in still:
            log.warning("worker %s did not stop in %.0fs, cancelling", tasks[task], shutdown_timeout_s)
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
    stop_wait.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return code
