"""The journey definition: JSON validated by pydantic, with one error code per mistake.

A journey starts when its ``trigger`` event arrives for a contact, runs ``steps`` in order
(``send``, ``wait``, ``wait_until``, ``branch``, ``wait_for_event``), and stops early on an
``exit_on`` event. Jumps (``then``, ``else``, ``on_event``, ``on_timeout``, ``if_past``) go
forward only: ``next``, ``end`` or the id of a later step, so every run ends and sends each
step at most once. Durations are ``"90s"``, ``"30m"``, ``"2h"``, ``"7d"``, ``"1d12h"`` or a
number of seconds; a ``wait_until`` offset may be negative (``"-24h"``).
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from shared.contracts.events import EventName, PropertyValue
from shared.templates import MAX_BODY, SENDER_RE, placeholder_errors

MAX_STEPS = 50
MAX_DURATION_S = 400 * 86400
_DURATION = re.compile(r"^(?P<sign>-)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")
RESERVED_TARGETS = ("next", "end")


def parse_duration(value: Any) -> int:
    """Seconds from ``"2h"``, ``"-24h"``, ``"1d12h"``, ``"90s"`` or a number."""
    if isinstance(value, bool):
        raise PydanticCustomError("invalid_duration", "a duration is a number of seconds or text like 2h, 7d, -24h")
    if isinstance(value, (int, float)):
        seconds = int(value)
    elif isinstance(value, str) and value.strip() and (m := _DURATION.match(value.strip().lower())) and any(
        m.group(k) for k in "dhms"
    ):
        seconds = sum(int(m.group(k) or 0) * n for k, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)))
        seconds = -seconds if m.group("sign") else seconds
    else:
        raise PydanticCustomError(
            "invalid_duration", "a duration is a number of seconds or text like 90s, 30m, 2h, 7d, 1d12h or -24h"
        )
    if abs(seconds) > MAX_DURATION_S:
        raise PydanticCustomError("duration_too_long", "durations are at most 400 days")
    return seconds


Duration = Annotated[int, BeforeValidator(parse_duration)]
StepId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,40}$")]
Target = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,40}$")]
# trigger.<property> / trigger.name / trigger.occurred_at, event.<property> (the latest event the run waited
# for, else the trigger), contact.<field> / contact.attributes.<key>.
FieldPath = Annotated[
    str,
    StringConstraints(pattern=r"^(trigger|event|contact)\.[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})?$"),
]
Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "not_exists", "contains"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Condition(_Strict):
    """``{"field": "event.total", "op": "gte", "value": 50}``."""

    field: FieldPath
    op: Op = "eq"
    value: PropertyValue | list[PropertyValue] = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise PydanticCustomError("list_required", "in and not_in take a list value")
        if self.op not in ("in", "not_in") and isinstance(self.value, list):
            raise PydanticCustomError("scalar_required", "only in and not_in take a list value")
        if self.op in ("gt", "gte", "lt", "lte") and (self.value is None or isinstance(self.value, bool)):
            raise PydanticCustomError("comparable_required", "gt, gte, lt and lte compare with a number or a text")
        return self


class EventMatch(_Strict):
    """An event by name (or any of several names), with conditions on its properties."""

    event: EventName | Annotated[list[EventName], Field(min_length=1, max_length=20)]
    where: Annotated[list[Condition], Field(max_length=20)] = Field(default_factory=list)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.event) if isinstance(self.event, list) else (self.event,)

    @model_validator(mode="after")
    def _event_fields(self) -> EventMatch:
        for c in self.where:
            if not c.field.startswith("event."):
                raise PydanticCustomError("event_field_required", "an event's conditions test event.<property>")
        return self


class Happened(_Strict):
    """Whether an event arrived since the contact entered (within ``within`` of entry)."""

    happened: EventName
    where: Annotated[list[Condition], Field(max_length=20)] = Field(default_factory=list)
    within: Duration | None = None


class _Step(_Strict):
    id: StepId | None = Field(None, description="Name to jump to; default: the step's position, 1-based")


class SendStep(_Step):
    type: Literal["send"]
    template_id: uuid.UUID | None = None
    body: Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY)] | None = None
    purpose: Literal["marketing", "transactional"] | None = None
    sender: str | None = None
    sender_pool: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = Field(
        None, description="Send from this sender pool instead of a sender: each contact keeps the sender it got from "
        "the pool before while it may send (docs/senders.md, \"Pools and sticky senders\")",
    )
    then: Target = Field("next", description="Where to go after sending: next, end or a later step id")

    @model_validator(mode="after")
    def _source(self) -> SendStep:
        if (self.template_id is None) == (self.body is None):
            raise PydanticCustomError("template_or_body", "a send step takes a template_id or a body, not both")
        if self.body is not None and self.purpose is None:
            raise PydanticCustomError("purpose_required", "an inline body needs a purpose: marketing or transactional")
        if self.sender is not None and self.sender_pool is not None:
            raise PydanticCustomError("sender_or_pool", "give a sender or a sender_pool, not both")
        if self.sender is not None and not SENDER_RE.match(self.sender):
            raise PydanticCustomError("invalid_sender", "a sender is a name of up to 11 letters, digits, spaces, . _ - or a number")
        if self.body is not None:
            problems = placeholder_errors(self.body, "body", extra_prefixes=("trigger", "event"))
            if problems:
                raise PydanticCustomError(problems[0].code, str(problems[0]))
        return self


class WaitStep(_Step):
    type: Literal["wait"]
    duration: Duration

    @model_validator(mode="after")
    def _positive(self) -> WaitStep:
        if self.duration <= 0:
            raise PydanticCustomError("duration_not_positive", "a wait lasts more than 0 seconds")
        return self


class WaitUntilStep(_Step):
    type: Literal["wait_until"]
    at: FieldPath = Field(description="A time: trigger.<property>, trigger.occurred_at, event.<property>, contact.attributes.<key>")
    offset: Duration = 0
    if_past: Target = Field("next", description="Where to go when the time has passed or is missing: next, end or a step id")


class BranchStep(_Step):
    type: Literal["branch"]
    if_: Condition | Happened = Field(alias="if")
    then: Target = "next"
    else_: Target = Field("next", alias="else")


class WaitForEventStep(_Step):
    type: Literal["wait_for_event"]
    event: EventName
    where: Annotated[list[Condition], Field(max_length=20)] = Field(default_factory=list)
    timeout: Duration
    on_event: Target = "next"
    on_timeout: Target = "next"

    @model_validator(mode="after")
    def _positive(self) -> WaitForEventStep:
        if self.timeout <= 0:
            raise PydanticCustomError("duration_not_positive", "a timeout lasts more than 0 seconds")
        for c in self.where:
            if not c.field.startswith("event."):
                raise PydanticCustomError("event_field_required", "an event's conditions test event.<property>")
        return self


Step = Annotated[SendStep | WaitStep | WaitUntilStep | BranchStep | WaitForEventStep, Field(discriminator="type")]


class Reentry(_Strict):
    """never: once per contact; after: again once ``after`` has passed since the last entry and
    no run is active; always: every trigger starts a run."""

    mode: Literal["never", "after", "always"] = "never"
    after: Duration | None = None

    @model_validator(mode="after")
    def _after(self) -> Reentry:
        if (self.mode == "after") != (self.after is not None):
            raise PydanticCustomError("reentry_after", "reentry mode after needs after (a duration); the others take none")
        if self.after is not None and self.after < 0:
            raise PydanticCustomError("duration_not_positive", "after cannot be negative")
        return self


class JourneyDefinition(_Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    description: Annotated[str, StringConstraints(max_length=1000)] | None = None
    trigger: EventMatch
    steps: Annotated[list[Step], Field(min_length=1, max_length=MAX_STEPS)]
    exit_on: Annotated[list[EventMatch], Field(max_length=10)] = Field(default_factory=list)
    reentry: Reentry = Field(default_factory=Reentry)

    @model_validator(mode="after")
    def _jumps(self) -> JourneyDefinition:
        ids = self.step_ids
        if len(set(ids)) != len(ids):
            raise PydanticCustomError("duplicate_step_id", "step ids must be unique")
        if reserved := [i for i in ids if i in RESERVED_TARGETS]:
            raise PydanticCustomError("reserved_step_id", "{id} is reserved for jumps", {"id": reserved[0]})
        for index, step in enumerate(self.steps):
            for target in _targets(step):
                if target in RESERVED_TARGETS:
                    continue
                if target not in ids:
                    raise PydanticCustomError(
                        "unknown_step", "step {step} jumps to {target}, which no step is called",
                        {"step": ids[index], "target": target},
                    )
                if ids.index(target) <= index:
                    raise PydanticCustomError(
                        "backward_jump", "step {step} jumps back to {target}: jumps only go forward",
                        {"step": ids[index], "target": target},
                    )
        return self

    @property
    def step_ids(self) -> list[str]:
        return [s.id or str(i + 1) for i, s in enumerate(self.steps)]

    def index_of(self, target: str, current: int) -> int | None:
        """The step a jump lands on; ``len(steps)`` for ``end``; None is never returned for a valid target."""
        if target == "next":
            return current + 1
        if target == "end":
            return len(self.steps)
        return self.step_ids.index(target)

    @property
    def listened_events(self) -> frozenset[str]:
        """Event names a running journey reacts to besides its exits (waits and branches)."""
        names: set[str] = set()
        for step in self.steps:
            if isinstance(step, WaitForEventStep):
                names.add(step.event)
            elif isinstance(step, BranchStep) and isinstance(step.if_, Happened):
                names.add(step.if_.happened)
        return frozenset(names)

    @property
    def template_ids(self) -> set[uuid.UUID]:
        return {s.template_id for s in self.steps if isinstance(s, SendStep) and s.template_id is not None}


def _targets(step: Any) -> list[str]:
    if isinstance(step, SendStep):
        return [step.then]
    if isinstance(step, BranchStep):
        return [step.then, step.else_]
    if isinstance(step, WaitForEventStep):
        return [step.on_event, step.on_timeout]
    if isinstance(step, WaitUntilStep):
        return [step.if_past]
    return []
