"""The journey engine in simulated time: the shipped examples with their real durations."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.scheduler.journeys.engine import (
    ACTIVE,
    COMPLETED,
    EXITED,
    EventFact,
    Journey,
    LaneResult,
    Run,
    advance,
    message_id,
    on_event,
    parse_time,
)
from services.scheduler.journeys.messages import SendError, build_send, send_event
from services.scheduler.quiet_hours.clock import FakeClock
from shared.journeys.definition import JourneyDefinition, parse_duration
from shared.statuses import MessageType
from shared.templates import Template

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "journeys"
PHONE = "+34600123456"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


class Sim:
    """One tenant, the lane and the timer driven by a fake clock, all in memory."""

    def __init__(self, *definitions: dict, contact: dict | None = None) -> None:
        self.clock = FakeClock(T0)
        self.journeys = [
            Journey(uuid.uuid4(), "acme", 1, JourneyDefinition.model_validate(d)) for d in definitions
        ]
        self.runs: list[Run] = []
        self.last: dict = {}
        self.sent: list[tuple[datetime, str, str]] = []  # (when, step id, journey name)
        self.contact = contact or {"first_name": "Ana", "attributes": {}}

    @property
    def running(self) -> dict:
        return {(j.journey_id, j.version): j for j in self.journeys}

    def event(self, name: str, phone: str = PHONE, event_id: uuid.UUID | None = None, **properties) -> EventFact:
        now = self.clock.now()
        fact = EventFact(event_id or uuid.uuid4(), name, phone, None, properties, now, now)
        mine = [r for r in self.runs if r.phone == phone and r.state == ACTIVE]
        result = LaneResult()
        on_event(fact, self.journeys, self.running, mine, self.last, result)
        self.proposed = [r.run_id for r in result.new]
        known = {r.run_id for r in self.runs}
        self.runs += [r for r in result.new if r.run_id not in known]  # as INSERT … ON CONFLICT (run_id) DO NOTHING
        self.tick()
        return fact

    def tick(self) -> None:
        now = self.clock.now()
        for i, run in enumerate(self.runs):
            if run.state == ACTIVE and run.due_at is not None and run.due_at <= now:
                journey = self.running[(run.journey_id, run.version)]
                self.runs[i], sends = advance(run, journey, self.contact, now)
                self.sent += [(now, s.step_id, journey.definition.name) for s in sends]

    def advance(self, **kwargs: float) -> None:
        """Move the clock in one-minute steps, letting the timer run at each."""
        end = self.clock.now() + timedelta(**kwargs)
        while self.clock.now() < end:
            self.clock.advance(min(timedelta(minutes=1), end - self.clock.now()))
            self.tick()

    def steps_sent(self) -> list[str]:
        return [s for _, s, _ in self.sent]


def test_lead_follow_up_sends_at_once_and_respects_reentry_after_a_day() -> None:
    sim = Sim(example("lead-follow-up"))
    sim.event("form.submitted", product="solar")
    assert sim.steps_sent() == ["thanks"]
    assert [r.state for r in sim.runs] == [COMPLETED]
    sim.advance(hours=23)
    sim.event("form.submitted")
    assert sim.steps_sent() == ["thanks"]  # within a day: not again
    sim.advance(hours=1, minutes=1)
    sim.event("form.submitted")
    assert sim.steps_sent() == ["thanks", "thanks"]


def test_welcome_drip_day_0_2_7_and_branch_on_an_order() -> None:
    sim = Sim(example("welcome-drip"))
    sim.event("user.signed_up")
    assert sim.sent[0][:2] == (T0, "welcome")
    sim.advance(days=2, minutes=-2)
    assert sim.steps_sent() == ["welcome"]
    sim.advance(minutes=2)
    assert sim.sent[-1][:2] == (T0 + timedelta(days=2), "tips")
    sim.advance(days=5, minutes=1)
    assert sim.sent[-1][:2] == (T0 + timedelta(days=7), "offer")
    assert sim.runs[0].state == COMPLETED
    sim.event("user.signed_up")  # reentry never
    assert len(sim.runs) == 1

    ordered = Sim(example("welcome-drip"))
    ordered.event("user.signed_up")
    ordered.advance(days=3)
    ordered.event("order.completed", total=30)
    ordered.advance(days=5)
    assert ordered.steps_sent() == ["welcome", "tips"]  # no offer: they ordered since entry
    assert ordered.runs[0].state == COMPLETED


def test_abandoned_cart_nudges_after_two_hours_without_an_order() -> None:
    sim = Sim(example("abandoned-cart"), contact={"first_name": "Ana"})
    sim.event("cart.updated", items=2, cart_url="acme.example/c/1")
    sim.advance(hours=1, minutes=59)
    assert sim.sent == []
    sim.advance(minutes=1)
    assert sim.sent == [(T0 + timedelta(hours=2), "nudge", "Abandoned cart")]
    sim.event("cart.updated", items=0)  # filter: an empty cart starts nothing
    assert len(sim.runs) == 1


def test_abandoned_cart_order_cancels_the_nudge() -> None:
    sim = Sim(example("abandoned-cart"))
    sim.event("cart.updated", items=1)
    sim.advance(minutes=30)
    sim.event("order.completed")
    sim.advance(hours=3)
    assert sim.sent == []
    assert (sim.runs[0].state, sim.runs[0].exit_reason) == (EXITED, "exit_event:order.completed")
    # Re-entry after a day, not before.
    sim.event("cart.updated", items=1)
    assert len(sim.runs) == 1
    sim.advance(days=1)
    sim.event("cart.updated", items=1)
    assert len(sim.runs) == 2 and sim.runs[1].state == ACTIVE


def test_event_reminders_24h_and_1h_before_starts_at() -> None:
    sim = Sim(example("event-reminders"))
    starts = T0 + timedelta(days=3)
    sim.event("event.registered", starts_at=starts.isoformat(), title="Launch")
    sim.advance(days=3)
    assert [(t, s) for t, s, _ in sim.sent] == [(starts - timedelta(hours=24), "remind_24h"), (starts - timedelta(hours=1), "remind_1h")]


def test_event_reminders_skip_a_reminder_already_past() -> None:
    sim = Sim(example("event-reminders"))
    starts = T0 + timedelta(hours=10)
    sim.event("event.registered", starts_at=starts.isoformat())
    sim.advance(hours=10)
    assert [(t, s) for t, s, _ in sim.sent] == [(starts - timedelta(hours=1), "remind_1h")]
    late = Sim(example("event-reminders"))
    late.event("event.registered", starts_at=(T0 + timedelta(minutes=30)).isoformat())
    late.advance(hours=1)
    assert late.sent == [] and late.runs[0].state == COMPLETED
    # Missing starts_at: the trigger filter keeps it out.
    late.event("event.registered", title="no date")
    assert len(late.runs) == 1


def test_re_engagement_after_30_quiet_days_every_activity_restarts_the_clock() -> None:
    sim = Sim(example("re-engagement"))
    sim.event("app.opened")
    sim.advance(days=20)
    sim.event("order.completed")
    sim.advance(days=29, hours=23)
    assert sim.sent == []
    sim.advance(hours=1)
    assert sim.sent == [(T0 + timedelta(days=50), "miss_you", "Re-engagement")]
    assert [r.state for r in sim.runs] == [EXITED, COMPLETED]


@pytest.mark.parametrize(("name", "event", "step"), [
    ("payment-updates", "payment.received", "received"),
    ("payment-updates", "payment.failed", "failed"),
    ("shipping-updates", "order.shipped", "shipped"),
    ("shipping-updates", "order.delivered", "delivered"),
])
def test_payment_and_shipping_updates_one_message_per_event(name: str, event: str, step: str) -> None:
    sim = Sim(example(name))
    sim.event(event, order_id="A1")
    sim.event(event, order_id="A2")
    assert sim.steps_sent() == [step, step]


def test_a_redelivered_trigger_enrols_once_and_sends_the_same_message_id() -> None:
    sim = Sim(example("payment-updates"))
    event_id = uuid.uuid4()
    sim.event("payment.received", event_id=event_id)
    first = sim.proposed
    sim.event("payment.received", event_id=event_id)  # the run ended: only its id (the primary key) dedupes
    assert sim.proposed == first and len(sim.runs) == 1 and sim.steps_sent() == ["received"]
    run = sim.runs[0]
    assert message_id(run.run_id, 1) == message_id(run.run_id, 1) != message_id(run.run_id, 2)


def test_advancing_the_same_state_twice_gives_the_same_sends() -> None:
    """What a crash between publish and commit does: the timer advances the old state again."""
    journey = Journey(uuid.uuid4(), "acme", 1, JourneyDefinition.model_validate(example("welcome-drip")))
    run = Run(uuid.uuid4(), "acme", journey.journey_id, 1, PHONE, None, {"name": "user.signed_up", "properties": {}},
              T0, step_since=T0, due_at=T0)
    first, sends1 = advance(run, journey, None, T0)
    again, sends2 = advance(run, journey, None, T0)
    assert [s.message_id for s in sends1] == [s.message_id for s in sends2] and len(sends1) == 1
    assert first.step == again.step == 1 and first.due_at == T0 + timedelta(days=2)
    assert run.step == 0  # advance never changes its input


def test_a_late_timer_keeps_the_schedule_of_later_waits() -> None:
    journey = Journey(uuid.uuid4(), "acme", 1, JourneyDefinition.model_validate(example("welcome-drip")))
    run = Run(uuid.uuid4(), "acme", journey.journey_id, 1, PHONE, None, {"properties": {}}, T0, step_since=T0, due_at=T0)
    run, _ = advance(run, journey, None, T0)
    run, sends = advance(run, journey, None, T0 + timedelta(days=2, hours=3))  # three hours late
    assert [s.step_id for s in sends] == ["tips"] and run.due_at == T0 + timedelta(days=7)


def test_archived_journey_exits_its_runs_without_sending() -> None:
    definition = JourneyDefinition.model_validate(example("welcome-drip"))
    journey = Journey(uuid.uuid4(), "acme", 1, definition, active=False)
    run = Run(uuid.uuid4(), "acme", journey.journey_id, 1, PHONE, None, {"properties": {}}, T0, step_since=T0, due_at=T0)
    after, sends = advance(run, journey, None, T0)
    assert sends == [] and (after.state, after.exit_reason) == (EXITED, "journey_archived")


def test_wait_for_event_seen_before_the_timer_reached_the_step() -> None:
    sim = Sim(example("abandoned-cart"))
    definition = dict(example("abandoned-cart"), exit_on=[])  # only the wait reacts
    sim = Sim(definition)
    now = sim.clock.now()
    fact = EventFact(uuid.uuid4(), "cart.updated", PHONE, None, {"items": 1}, now, now)
    result = LaneResult()
    on_event(fact, sim.journeys, sim.running, sim.runs, sim.last, result)  # enrolled, not yet advanced
    order = EventFact(uuid.uuid4(), "order.completed", PHONE, None, {}, now, now)
    on_event(order, sim.journeys, sim.running, sim.runs, sim.last, LaneResult())
    sim.tick()
    sim.advance(hours=3)
    assert sim.sent == [] and sim.runs[0].state == COMPLETED
    assert sim.runs[0].last_event["name"] == "order.completed"


def test_branch_on_contact_attribute_and_reentry_always_runs_in_parallel() -> None:
    definition = {
        "name": "vip", "trigger": {"event": "order.completed"}, "reentry": {"mode": "always"},
        "steps": [
            {"type": "branch", "if": {"field": "contact.attributes.tier", "op": "in", "value": ["gold", "vip"]}, "then": "vip"},
            {"type": "send", "purpose": "transactional", "body": "Thanks", "then": "end"},
            {"id": "vip", "type": "wait", "duration": "1h"},
            {"type": "send", "purpose": "transactional", "body": "Thanks, {{attributes.tier}} member"},
        ],
    }
    sim = Sim(definition, contact={"attributes": {"tier": "gold"}})
    sim.event("order.completed")
    sim.advance(minutes=30)
    sim.event("order.completed")
    assert len([r for r in sim.runs if r.state == ACTIVE]) == 2
    sim.advance(hours=1)
    assert sim.steps_sent() == ["4", "4"]
    plain = Sim(definition, contact={"attributes": {"tier": "basic"}})
    plain.event("order.completed")
    assert plain.steps_sent() == ["2"]


def test_wait_until_maths_negative_offsets_zones_and_bad_values() -> None:
    assert parse_time("2026-03-05T10:00:00+01:00") == datetime(2026, 3, 5, 9, tzinfo=UTC)
    assert parse_time("2026-03-05") == datetime(2026, 3, 5, tzinfo=UTC)
    assert parse_time("2026-03-05T10:00:00Z") == datetime(2026, 3, 5, 10, tzinfo=UTC)
    assert parse_time(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_time("soon") is None and parse_time(True) is None
    assert [parse_duration(v) for v in ("90s", "30m", "2h", "7d", "1d12h", "-24h", 15)] == [90, 1800, 7200, 604800, 129600, -86400, 15]
    with pytest.raises(ValueError):
        parse_duration("2 weeks")


def test_definition_errors_have_codes() -> None:
    def codes(definition: dict) -> list[str]:
        with pytest.raises(ValidationError) as info:
            JourneyDefinition.model_validate(definition)
        return [e["type"] for e in info.value.errors()]

    base = {"name": "x", "trigger": {"event": "a.b"}}
    assert codes({**base, "steps": [{"type": "send", "body": "hi"}]}) == ["purpose_required"]
    assert codes({**base, "steps": [{"type": "send", "purpose": "marketing"}]}) == ["template_or_body"]
    assert codes({**base, "steps": [{"type": "send", "purpose": "marketing", "body": "{{frist_name}}"}]}) == ["unknown_field"]
    assert codes({**base, "steps": [{"type": "wait", "duration": "soon"}]}) == ["invalid_duration"]
    assert codes({**base, "steps": [{"type": "wait", "duration": 0}]}) == ["duration_not_positive"]
    assert codes({**base, "steps": [{"id": "a", "type": "wait", "duration": 5},
                                    {"type": "branch", "if": {"field": "contact.country", "value": "ES"}, "then": "a"}]}) == ["backward_jump"]
    assert codes({**base, "steps": [{"type": "branch", "if": {"field": "contact.country"}, "then": "nope"}]}) == ["unknown_step"]
    assert codes({**base, "steps": [{"type": "wait", "duration": 5}], "reentry": {"mode": "after"}}) == ["reentry_after"]
    assert codes({**base, "steps": [{"type": "teleport"}]}) == ["union_tag_invalid"]
    assert codes({**base, "steps": []}) == ["too_short"]


def test_send_renders_for_the_contact_with_trigger_fields_and_opt_out() -> None:
    definition = JourneyDefinition.model_validate(example("abandoned-cart"))
    journey = Journey(uuid.uuid4(), "acme", 1, definition)
    run = Run(uuid.uuid4(), "acme", journey.journey_id, 1, PHONE, None,
              {"name": "cart.updated", "properties": {"items": 1, "cart_url": "acme.example/c/9"}}, T0,
              step=1, step_since=T0, due_at=T0)
    _, sends = advance(run, journey, {"first_name": "Ana"}, T0)
    contact_id = uuid.uuid4()
    request = build_send(sends[0], run, {"first_name": "Ana", "contact_id": contact_id, "language": "es"}, None, T0)
    assert request.body.startswith("Ana, your cart is waiting: acme.example/c/9")
    assert request.body.endswith("Responde BAJA para darte de baja")  # marketing: opt-out in the contact's language
    assert (request.type, request.to, request.journey_id, request.contact_id) == (
        MessageType.MARKETING, PHONE, journey.journey_id, contact_id)
    assert request.message_id == sends[0].message_id and request.requested_at == T0
    assert request.metadata == {"journey_step": sends[0].step_id, "journey_run": str(run.run_id)}
    template_step = sends[0].__class__(sends[0].run_id, 1, "t", definition.steps[1].model_copy(
        update={"template_id": uuid.uuid4(), "body": None, "purpose": None}), sends[0].message_id)
    with pytest.raises(SendError) as info:
        build_send(template_step, run, None, None, T0)
    assert info.value.code == "template_not_found"
    rendered = build_send(template_step, run, None, Template("transactional", "en", {"en": "Hi {{first_name|you}}"}, "Acme"), T0)
    assert (rendered.body, rendered.sender, rendered.sender_pool, rendered.type) == ("Hi you", "Acme", None, MessageType.TRANSACTIONAL)
    assert rendered.template_id == template_step.step.template_id
    # a step naming a sender pool sends from the pool (ingest picks the contact's sender), not the template's sender
    pooled = sends[0].__class__(sends[0].run_id, 1, "t", template_step.step.model_copy(update={"sender_pool": "promo"}),
                                sends[0].message_id)
    from_pool = build_send(pooled, run, None, Template("transactional", "en", {"en": "Hi"}, "Acme"), T0)
    assert (from_pool.sender, from_pool.sender_pool) == (None, "promo")
    # published on the journey-sends topic, keyed by number, the message id as the event id (a re-advance is one send)
    out = send_event("acme", request, "trace")
    assert (out.topic.suffix, out.key, out.event.event_id, out.event.tenant) == (
        "journeys.sends.v1", PHONE, request.message_id, "acme")
