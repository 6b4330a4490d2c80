"""Group the work of concurrent callers into one call (one SQL statement for many requests).

Each caller submits an item and awaits its own result. The first item starts a flush on
the next turn of the event loop, so the items submitted in the same turn go with it; items
submitted while ``max_in_flight`` flushes run wait and leave together with the next one.
A lone caller therefore waits for nothing but its own round trip; under load the round
trips per request fall with the number of requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(
        self, flush: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_batch: int = 500, max_in_flight: int = 1
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._maybe_start()
        return await future

    def _maybe_start(self) -> None:
        if self._pending and self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = asyncio.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        # Runs one loop turn after the first submit: what arrived meanwhile goes along.
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        try:
            if batch:
                results = await self._flush([item for item, _ in batch])
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # the caller may have gone (client disconnected)
                        future.set_result(result)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            self._maybe_start()
