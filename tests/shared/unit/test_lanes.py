"""Which consumer lanes a process runs (HERALD_LANES): priority and campaign work apart."""

from __future__ import annotations

import pytest

from shared.service import MAIN_LANE, Lane, chosen_lanes
from shared.topics import ACCEPTED, ACCEPTED_BULK, CONTACT_EVENTS


async def _handler(batch):  # pragma: no cover - never called
    return []


LANES = [Lane(MAIN_LANE, "g", [ACCEPTED], _handler), Lane("bulk", "g.bulk", [ACCEPTED_BULK], _handler, bulk=True),
         Lane("journeys", "g.journeys", [CONTACT_EVENTS], _handler)]


def test_every_lane_by_default() -> None:
    assert [lane.name for lane in chosen_lanes(LANES, None, "scheduler")] == ["main", "bulk", "journeys"]


def test_an_empty_list_runs_no_lane_where_the_service_serves_without_one() -> None:
    """ingest-bulk (docs/kubernetes.md): the batch endpoint and the campaign launcher, no consumer."""
    assert chosen_lanes(LANES, [], "ingest") == []
    with pytest.raises(ValueError, match=r"HERALD_LANES is empty: scheduler needs at least one consumer lane \(its lanes: main, bulk, journeys\)"):
        chosen_lanes(LANES, [], "scheduler", needs_one=True)


def test_only_the_lanes_named() -> None:
    assert [lane.name for lane in chosen_lanes(LANES, ["bulk"], "scheduler")] == ["bulk"]
    assert [lane.name for lane in chosen_lanes(LANES, ["journeys", "main"], "scheduler")] == ["main", "journeys"]


def test_an_unknown_lane_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"HERALD_LANES names priority, which scheduler does not have \(its lanes: main, bulk, journeys\)"):
        chosen_lanes(LANES, ["priority", "bulk"], "scheduler")


def test_the_settings_read_lanes_and_nice_from_the_environment(monkeypatch) -> None:
    from shared.settings import ConsumerSettings

    monkeypatch.setenv("HERALD_LANES", '["bulk"]')
    monkeypatch.setenv("HERALD_NICE", "10")
    settings = ConsumerSettings()
    assert settings.lanes == ["bulk"] and settings.nice == 10
    monkeypatch.setenv("HERALD_LANES", "[]")
    assert ConsumerSettings().lanes == []
    monkeypatch.delenv("HERALD_LANES")
    assert ConsumerSettings().lanes is None
    monkeypatch.setenv("HERALD_NICE", "25")
    with pytest.raises(ValueError):
        ConsumerSettings()
