"""The journey engine: pure functions over a run's state, with ``now`` passed in.

A run is one contact's pass through one journey version. The lane calls :func:`on_event`
for every contact event (exit, wake a ``wait_for_event``, remember events that branches ask
about, enrol); the timer calls :func:`advance` for runs that are due (the step to start, a
wait that ended). :func:`advance` goes through instant steps (``send``, ``branch``) until a
step has to wait, and returns the sends for the caller to publish; each send's message id is
derived from the run and the step, so advancing the same run twice never sends twice.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from shared.contracts import derived_event_id
from shared.journeys.definition import (
    BranchStep,
    Condition,
    EventMatch,
    Happened,
    JourneyDefinition,
    SendStep,
    WaitForEventStep,
    WaitStep,
    WaitUntilStep,
)

ACTIVE, COMPLETED, EXITED = "active", "completed", "exited"
MAX_SEEN = 50  # events a run remembers for its branches and waits


@dataclass(frozen=True, slots=True)
class EventFact:
    """A contact event as the engine sees it; ``at`` is when Herald handled it."""

    event_id: uuid.UUID
    name: str
    phone: str
    contact_id: uuid.UUID | None
    properties: Mapping[str, Any]
    occurred_at: datetime
    at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": str(self.event_id),
            "name": self.name,
            "properties": dict(self.properties),
            "occurred_at": self.occurred_at.isoformat(),
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Journey:
    journey_id: uuid.UUID
    tenant: str
    version: int
    definition: JourneyDefinition
    active: bool = True


@dataclass
class Run:
    run_id: uuid.UUID
    tenant: str
    journey_id: uuid.UUID
    version: int
    phone: str
    contact_id: uuid.UUID | None
    trigger: dict[str, Any]
    entered_at: datetime
    step: int = 0
    step_since: datetime | None = None  # when the run reached its current step
    armed: bool = False  # the current wait step has started waiting
    due_at: datetime | None = None  # the timer looks at the run then (None: nothing to do)
    state: str = ACTIVE
    last_event: dict[str, Any] | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    exit_reason: str | None = None
    ended_at: datetime | None = None
    sends: int = 0

    def copy(self) -> Run:
        return copy.deepcopy(self)


@dataclass(frozen=True, slots=True)
class Send:
    """A send step reached: the caller renders and publishes it."""

    run_id: uuid.UUID
    step_index: int
    step_id: str
    step: SendStep
    message_id: uuid.UUID


def message_id(run_id: uuid.UUID, step_index: int) -> uuid.UUID:
    return derived_event_id("journey-send", run_id, step_index)


def run_id_for(journey_id: uuid.UUID, event_id: uuid.UUID) -> uuid.UUID:
    """One run per journey and trigger event: a redelivered trigger enrols once."""
    return derived_event_id("journey-run", journey_id, event_id)


# --- field look-ups and conditions -----------------------------------------------------------


def lookup(path: str, run: Run | None, contact: Mapping[str, Any] | None, event: Mapping[str, Any] | None = None) -> Any:
    """``trigger.x``, ``event.x`` (``event`` given, else the run's last event, else its trigger),
    ``contact.x`` / ``contact.attributes.x``; None when absent."""
    head, _, rest = path.partition(".")
    if head == "contact":
        if contact is None:
            return None
        if rest.startswith("attributes."):
            return (contact.get("attributes") or {}).get(rest.split(".", 1)[1])
        return contact.get(rest)
    source: Mapping[str, Any] | None
    if head == "trigger":
        source = run.trigger if run else None
    else:
        source = event if event is not None else (run.last_event or run.trigger) if run else None
    if source is None:
        return None
    if rest in ("name", "occurred_at"):  # the event's own fields, not properties
        return source.get(rest)
    return (source.get("properties") or {}).get(rest)


def _same(a: Any, b: Any) -> bool:
    """Equality where true is not 1 and 1 is 1.0."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _comparable(a: Any, b: Any) -> tuple[Any, Any] | None:
    if isinstance(a, bool) or isinstance(b, bool):
        return None
    if isinstance(a, (int, float, Decimal)) and isinstance(b, (int, float, Decimal)):
        return Decimal(str(a)), Decimal(str(b))
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    return None


def holds(condition: Condition, run: Run | None, contact: Mapping[str, Any] | None, event: Mapping[str, Any] | None = None) -> bool:
    value = lookup(condition.field, run, contact, event)
    op, want = condition.op, condition.value
    if op == "exists":
        return value is not None
    if op == "not_exists":
        return value is None
    if op == "eq":
        return _same(value, want)
    if op == "ne":
        return not _same(value, want)
    if op == "in":
        return value is not None and any(_same(value, w) for w in want)  # type: ignore[union-attr]
    if op == "not_in":
        return not any(_same(value, w) for w in want)  # type: ignore[union-attr]
    if op == "contains":
        if isinstance(value, str) and isinstance(want, str):
            return want in value
        return isinstance(value, list) and want in value
    pair = _comparable(value, want)
    if pair is None:
        return False
    a, b = pair
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


def matches(match: EventMatch, fact: EventFact) -> bool:
    if fact.name not in match.names:
        return False
    return all(holds(c, None, None, fact.as_json()) for c in match.where)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 text (UTC when it has no zone; a date is its midnight UTC) or epoch seconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return None


def wait_until_target(step: WaitUntilStep, run: Run, contact: Mapping[str, Any] | None) -> datetime | None:
    base = parse_time(lookup(step.at, run, contact))
    return base + timedelta(seconds=step.offset) if base is not None else None


# --- run transitions -------------------------------------------------------------------------


def _goto(run: Run, definition: JourneyDefinition, target: str, at: datetime) -> None:
    index = definition.index_of(target, run.step)
    assert index is not None
    run.step, run.step_since, run.armed, run.due_at = index, at, False, at


def _end(run: Run, state: str, reason: str | None, at: datetime) -> None:
    run.state, run.exit_reason, run.ended_at, run.due_at, run.armed = state, reason, at, None, False


def _seen_match(run: Run, name: str, where: list[Condition], since: datetime, until: datetime | None = None) -> dict[str, Any] | None:
    for seen in run.seen:
        at = parse_time(seen["at"])
        if seen["name"] != name or at is None or at < since or (until is not None and at > until):
            continue
        if all(holds(c, None, None, seen) for c in where):
            return seen
    return None


def advance(run: Run, journey: Journey, contact: Mapping[str, Any] | None, now: datetime) -> tuple[Run, list[Send]]:
    """Move a due run as far as it can go at ``now``; return the new state and the sends.

    Steps that wait are timed from when the run reached them (not from when the timer got
    to it), so a late timer does not stretch a drip.
    """
    run = run.copy()
    sends: list[Send] = []
    if run.state != ACTIVE:
        return run, sends
    if not journey.active:
        _end(run, EXITED, "journey_archived", now)
        return run, sends
    definition = journey.definition
    steps, ids = definition.steps, definition.step_ids
    for _ in range(2 * len(steps) + 2):  # forward-only jumps: each step is visited once
        if run.step >= len(steps):
            _end(run, COMPLETED, None, now)
            break
        step = steps[run.step]
        since = run.step_since or now
        if isinstance(step, SendStep):
            sends.append(Send(run.run_id, run.step, ids[run.step], step, message_id(run.run_id, run.step)))
            run.sends += 1
            _goto(run, definition, step.then, since)
        elif isinstance(step, BranchStep):
            if isinstance(step.if_, Happened):
                until = run.entered_at + timedelta(seconds=step.if_.within) if step.if_.within is not None else None
                ok = _seen_match(run, step.if_.happened, step.if_.where, run.entered_at, until) is not None
            else:
                ok = holds(step.if_, run, contact)
            _goto(run, definition, step.then if ok else step.else_, since)
        elif isinstance(step, WaitStep):
            due = run.due_at if run.armed and run.due_at else since + timedelta(seconds=step.duration)
            if due > now:
                run.armed, run.due_at = True, due
                break
            _goto(run, definition, "next", due)
        elif isinstance(step, WaitUntilStep):
            target = wait_until_target(step, run, contact)
            if target is None or (not run.armed and target <= since):
                _goto(run, definition, step.if_past, since)  # missing or already past
                continue
            if target > now:
                run.armed, run.due_at = True, target
                break
            _goto(run, definition, "next", target)
        elif isinstance(step, WaitForEventStep):
            if not run.armed:
                seen = _seen_match(run, step.event, step.where, since)
                if seen is not None:  # it arrived before the timer reached this step
                    run.last_event = seen
                    _goto(run, definition, step.on_event, since)
                    continue
            due = run.due_at if run.armed and run.due_at else since + timedelta(seconds=step.timeout)
            if due > now:
                run.armed, run.due_at = True, due
                break
            _goto(run, definition, step.on_timeout, due)
    return run, sends


def reentry_allows(definition: JourneyDefinition, active: bool, last_entered: datetime | None, now: datetime) -> bool:
    mode = definition.reentry.mode
    if mode == "always":
        return True
    if mode == "never":
        return last_entered is None and not active
    assert definition.reentry.after is not None
    return not active and (last_entered is None or now - last_entered >= timedelta(seconds=definition.reentry.after))


@dataclass
class LaneResult:
    new: list[Run] = field(default_factory=list)
    changed: dict[uuid.UUID, Run] = field(default_factory=dict)


def on_event(
    fact: EventFact,
    startable: Iterable[Journey],
    running: Mapping[tuple[uuid.UUID, int], Journey],
    runs: list[Run],
    last_entered: dict[tuple[uuid.UUID, str], datetime],
    result: LaneResult,
) -> None:
    """Apply one event to the contact's (one tenant, one phone) active ``runs`` (updated in place, recorded in
    ``result``): exits first, then wake-ups, then enrolments in journeys it triggers.

    ``startable``: the tenant's active journeys (current version); ``running``: the version
    of each run's journey. ``runs`` and ``last_entered`` carry state from one event to the
    next of a batch, so a batch handles a contact's events in order.
    """
    now = fact.at
    for run in runs:
        if run.state != ACTIVE:
            continue
        journey = running.get((run.journey_id, run.version))
        if journey is None:
            continue
        definition = journey.definition
        if any(matches(m, fact) for m in definition.exit_on):
            _end(run, EXITED, f"exit_event:{fact.name}", now)
            result.changed[run.run_id] = run
            continue
        if fact.name not in definition.listened_events:
            continue
        run.seen = [*run.seen, fact.as_json()][-MAX_SEEN:]
        step = definition.steps[run.step] if run.step < len(definition.steps) else None
        if isinstance(step, WaitForEventStep) and run.armed and fact.name == step.event:
            if all(holds(c, None, None, fact.as_json()) for c in step.where):
                run.last_event = fact.as_json()
                _goto(run, definition, step.on_event, now)  # due now: the timer carries on
        result.changed[run.run_id] = run
    for journey in startable:
        if not journey.active or not matches(journey.definition.trigger, fact):
            continue
        key = (journey.journey_id, fact.phone)
        active = any(r.state == ACTIVE and r.journey_id == journey.journey_id for r in runs)
        if not reentry_allows(journey.definition, active, last_entered.get(key), now):
            continue
        run = Run(
            run_id=run_id_for(journey.journey_id, fact.event_id),
            tenant=journey.tenant,
            journey_id=journey.journey_id,
            version=journey.version,
            phone=fact.phone,
            contact_id=fact.contact_id,
            trigger=fact.as_json(),
            entered_at=now,
            step_since=now,
            due_at=now,
        )
        if any(r.run_id == run.run_id for r in runs):
            continue  # this very event enrolled it already (a redelivery)
        runs.append(run)
        last_entered[key] = now
        result.new.append(run)

