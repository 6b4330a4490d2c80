"""The coalescer groups concurrent callers into one flush and answers each with its own result."""

from __future__ import annotations

import asyncio

import pytest

from shared.coalesce import Coalescer


async def test_concurrent_items_share_one_flush_and_get_their_own_results() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(flush)
    results = await asyncio.gather(*(c.submit(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert flushes == [list(range(50))]


async def test_items_arriving_during_a_flush_go_with_the_next_one() -> None:
    flushes: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        if len(flushes) == 1:
            await gate.wait()
        return items

    c: Coalescer[int, int] = Coalescer(flush)
    first = asyncio.ensure_future(c.submit(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(c.submit(i)) for i in range(1, 4)]
    await asyncio.sleep(0.01)
    assert flushes == [[0]], "one flush in flight at a time"
    gate.set()
    assert await first == 0 and await asyncio.gather(*later) == [1, 2, 3]
    assert flushes == [[0], [1, 2, 3]]


async def test_max_batch_splits_flushes() -> None:
    sizes: list[int] = []

    async def flush(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    c: Coalescer[int, int] = Coalescer(flush, max_batch=4)
    assert await asyncio.gather(*(c.submit(i) for i in range(10))) == list(range(10))
    assert sizes == [4, 4, 2]


async def test_a_failed_flush_fails_its_callers_only_and_the_next_one_runs() -> None:
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database away")
        return items

    c: Coalescer[int, int] = Coalescer(flush)
    with pytest.raises(ConnectionError):
        await c.submit(1)
    assert await c.submit(2) == 2


async def test_a_caller_that_goes_away_does_not_break_the_others() -> None:
    async def flush(items: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        return items

    c: Coalescer[int, int] = Coalescer(flush)
    gone = asyncio.ensure_future(c.submit(1))
    stays = asyncio.ensure_future(c.submit(2))
    await asyncio.sleep(0)
    gone.cancel()
    assert await stays == 2
