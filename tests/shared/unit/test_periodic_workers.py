"""Workers on shared/periodic.py whose pass is "as much as there is to do": the campaign launcher
goes on at once while a campaign is due and waits ``idle_s`` when none is (or a pass failed); the
retention job goes on at once while a run stops at its budget with more to expire. Their
passes are counted under their task names. No I/O: the passes are scripted."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from services.ingest.campaigns.launcher import Launcher
from shared import metrics
from shared.retention_store import RetentionJob
from shared.settings import RetentionSettings


def runs(task: str, outcome: str) -> float:
    return metrics.PERIODIC_RUNS.labels(task, outcome)._value.get()


class Script:
    """Answers each call with the next result (an exception is raised); sets ``stop`` after the last."""

    def __init__(self, results: list[object], stop: asyncio.Event) -> None:
        self.results, self.stop = list(results), stop
        self.at: list[float] = []

    async def __call__(self) -> object:
        self.at.append(time.monotonic())
        result = self.results.pop(0)
        if not self.results:
            self.stop.set()
        if isinstance(result, Exception):
            raise result
        return result

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.at, self.at[1:], strict=False)]


async def test_the_launcher_goes_on_while_campaigns_are_due_and_waits_when_none_is(caplog: pytest.LogCaptureFixture) -> None:
    idle = 0.3
    launcher = Launcher(None, None, idle_s=idle)  # type: ignore[arg-type]
    script = Script([True, True, False, RuntimeError("database away"), True, False], launcher._stop)
    launcher.run_once = script  # type: ignore[method-assign]
    ok, errors = runs("campaign_launcher", "ok"), runs("campaign_launcher", "error")
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(launcher.run(), 10)
    gaps = script.gaps()
    assert len(script.at) == 6
    assert gaps[0] < idle and gaps[1] < idle, "a campaign was due: the next claim at once"
    assert gaps[2] >= idle * 0.9, "none was due: wait idle_s"
    assert gaps[3] >= idle * 0.9, "a failed pass: wait idle_s, then go on"
    assert gaps[4] < idle
    assert runs("campaign_launcher", "ok") - ok == 2 and runs("campaign_launcher", "error") - errors == 1
    assert [r.message for r in caplog.records if "launcher" in r.message] == ["campaign launcher failed; retrying"]


async def test_the_launcher_stops_at_once_while_it_waits() -> None:
    launcher = Launcher(None, None, idle_s=60)  # type: ignore[arg-type]
    launcher.run_once = Script([False, False], asyncio.Event())  # type: ignore[method-assign]
    task = asyncio.create_task(launcher.run())
    await asyncio.sleep(0.05)
    launcher.stop()
    await asyncio.wait_for(task, 2)


async def test_the_retention_job_goes_on_while_behind_and_checks_again_after_its_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = RetentionJob(None, "svc", RetentionSettings(retention_interval_s=10), [], owner="me")  # type: ignore[arg-type]
    script = Script(["behind", "success", RuntimeError("database away"), "behind", "failed"], job._stop)
    job.run_once = script  # type: ignore[method-assign]
    ok, errors = runs("retention", "ok"), runs("retention", "error")
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(job.run(), 20)
    gaps = script.gaps()
    assert len(script.at) == 5
    assert gaps[0] < 1, "behind: the next run at once"
    assert gaps[1] >= 0.9 and gaps[2] >= 0.9, "the check interval: a tenth of the retention interval, at least 1 s"
    assert gaps[3] < 1
    assert runs("retention", "ok") - ok == 2 and runs("retention", "error") - errors == 1
    assert "retention check failed" in [r.message for r in caplog.records]
