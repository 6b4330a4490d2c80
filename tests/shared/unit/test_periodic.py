"""shared/periodic.py: the one loop of the services' periodic workers (no I/O: a fake step)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shared import metrics
from shared.periodic import next_delay, run_periodically, wait_or_stop


def runs(task: str, outcome: str) -> float:
    return metrics.PERIODIC_RUNS.labels(task, outcome)._value.get()


def test_the_interval_stays_fixed_without_backoff_or_jitter() -> None:
    assert next_delay(2.0) == 2.0
    assert next_delay(2.0, failures=5) == 2.0


def test_backoff_doubles_per_consecutive_failure_up_to_its_cap() -> None:
    assert [next_delay(1.0, n, backoff_max_s=10.0) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert next_delay(5.0, 3, backoff_max_s=1.0) == 5.0, "the cap never shortens the interval"
    assert next_delay(1.0, 10_000, backoff_max_s=30.0) == 30.0


def test_jitter_adds_up_to_its_fraction() -> None:
    assert next_delay(10.0, jitter=0.2, rand=lambda: 0.0) == 10.0
    assert next_delay(10.0, jitter=0.2, rand=lambda: 1.0) == pytest.approx(12.0)
    assert next_delay(10.0, 2, jitter=0.5, backoff_max_s=100.0, rand=lambda: 0.5) == pytest.approx(50.0)


async def test_wait_or_stop_says_whether_it_was_stopped() -> None:
    stop = asyncio.Event()
    assert await wait_or_stop(stop, 0.01) is False
    stop.set()
    assert await wait_or_stop(stop, 10.0) is True


async def test_runs_the_step_every_interval_until_stopped_and_counts_passes() -> None:
    stop = asyncio.Event()
    calls: list[int] = []
    before_ok = runs("t_runs", "ok")

    async def step() -> None:
        calls.append(1)
        if len(calls) == 3:
            stop.set()

    await asyncio.wait_for(run_periodically("t_runs", step, 0.001, stop), 5)
    assert len(calls) == 3
    assert runs("t_runs", "ok") - before_ok == 3
    assert metrics.PERIODIC_LAST_SUCCESS.labels("t_runs")._value.get() > 0


async def test_a_failing_pass_is_logged_counted_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    calls: list[int] = []
    logger = logging.getLogger("tests.periodic")

    async def step() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("boom")
        stop.set()

    before_err = runs("t_fail", "error")
    with caplog.at_level(logging.WARNING, logger="tests.periodic"):
        await asyncio.wait_for(run_periodically("t_fail", step, 0.001, stop, logger=logger,
                                                error_message="the pass failed", error_level=logging.WARNING,
                                                traceback=False), 5)
    assert len(calls) == 3
    assert runs("t_fail", "error") - before_err == 2
    records = [r for r in caplog.records if r.name == "tests.periodic"]
    assert [r.getMessage() for r in records] == ["the pass failed", "the pass failed"]
    assert [r.failures for r in records] == [1, 2]  # type: ignore[attr-defined]
    assert records[0].task == "t_fail" and "boom" in records[0].error  # type: ignore[attr-defined]
    assert records[0].levelno == logging.WARNING and not records[0].exc_info


async def test_stop_ends_the_wait_at_once() -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)

    task = asyncio.create_task(run_periodically("t_stop", step, 3600.0, stop))
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert calls == [1]


async def test_wait_first_waits_one_interval_before_the_first_pass() -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)

    task = asyncio.create_task(run_periodically("t_first", step, 3600.0, stop, wait_first=True))
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert calls == [], "stopped during the first wait: no pass"


async def test_cancelling_cancels_the_pass_in_flight() -> None:
    stop = asyncio.Event()
    started = asyncio.Event()

    async def step() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(run_periodically("t_cancel", step, 1.0, stop))
    await asyncio.wait_for(started.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

