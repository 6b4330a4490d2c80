"""Unit tests of the simulator core: no I/O, injected time and random generators."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pydantic import ValidationError

from services.simulator.core import (
    ERROR_CODES,
    MAX_BATCH,
    ControlError,
    FailureMode,
    Outcome,
    OutcomeRates,
    RequestError,
    Simulator,
    SubmitRequest,
    iso_utc,
    parse_batch,
    parse_control,
    parse_submit,
)
from services.simulator.settings import SimulatorSettings

T0 = 1_764_000_000.0


def make_sim(seed: int = 7, rates=(0.9, 0.07, 0.03), delay=(50, 500), **kw) -> Simulator:
    ids = (f"sim-{i:04d}" for i in range(1_000_000))
    return Simulator(
        rates=OutcomeRates(*rates),
        receipt_delay_ms=delay,
        rng=random.Random(seed),
        id_factory=lambda: next(ids),
        **kw,
    )


def req(ref: str, to: str = "+34600000001") -> SubmitRequest:
    return SubmitRequest(to=to, body="hi", client_ref=ref)


# -- parsing ------------------------------------------------------------------------------------


def test_parse_submit_accepts_a_full_message() -> None:
    r = parse_submit({"to": "+34600000001", "from": "Herald", "body": "hola", "client_ref": "m-1", "segments": 2})
    assert r == SubmitRequest(to="+34600000001", body="hola", client_ref="m-1", sender="Herald", segments=2)
    assert parse_submit({"to": "+34600000001", "body": "x", "client_ref": "m"}).segments == 1


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"to": "+34600000001", "body": "x"},  # no client_ref
        {"to": "+34600000001", "body": "x", "client_ref": ""},
        {"to": "+34600000001", "body": "x", "client_ref": 12},
        {"to": "34600000001", "body": "x", "client_ref": "m"},  # no +
        {"to": "+3460abc", "body": "x", "client_ref": "m"},
        {"to": "+34600000001", "body": "", "client_ref": "m"},
        {"to": "+34600000001", "client_ref": "m"},
        {"to": "+34600000001", "body": "x", "client_ref": "m", "segments": 0},
        {"to": "+34600000001", "body": "x", "client_ref": "m", "segments": True},
        {"to": "+34600000001", "body": "x", "client_ref": "m", "segments": "1"},
        {"to": "+34600000001", "body": "x", "client_ref": "m", "from": ""},
        {"to": "+34600000001", "body": "x", "client_ref": "m", "extra": 1},
        {"to": "+99912345678", "body": "x"},  # invalid request wins over invalid destination
    ],
)
def test_parse_submit_rejects_invalid_requests(obj) -> None:
    with pytest.raises(RequestError) as exc:
        parse_submit(obj)
    assert exc.value.code == "invalid_request"
    assert exc.value.status == 400


def test_plus_999_is_a_permanent_invalid_destination() -> None:
    with pytest.raises(RequestError) as exc:
        parse_submit({"to": "+99912345678", "body": "x", "client_ref": "m"})
    assert (exc.value.code, exc.value.status) == ("invalid_destination", 400)
    assert "12345678" not in exc.value.message  # the number is masked


def test_parse_batch_limits() -> None:
    assert parse_batch({"messages": [{}] * MAX_BATCH}) == [{}] * MAX_BATCH
    for bad in ({"messages": [{}] * (MAX_BATCH + 1)}, {"messages": []}, {"messages": {}}, {}, [1]):
        with pytest.raises(RequestError):
            parse_batch(bad)


def test_errors_mask_the_number_keeping_first_and_last_three() -> None:
    with pytest.raises(RequestError) as exc:
        parse_submit({"to": "+99912345678", "body": "x", "client_ref": "m"})
    masked = exc.value.message.split()[1]
    assert masked.startswith("+99") and masked.endswith("678") and set(masked[3:-3]) == {"*"}


def test_iso_utc() -> None:
    assert iso_utc(T0 + 0.25) == "2025-11-24T16:00:00.250Z"


# -- outcomes -----------------------------------------------------------------------------------


def test_outcome_rates_must_sum_to_one() -> None:
    with pytest.raises(ValueError):
        OutcomeRates(0.9, 0.07, 0.02)
    with pytest.raises(ValueError):
        OutcomeRates(1.1, -0.1, 0.0)
    OutcomeRates(0.9, 0.07, 0.03)


def test_outcome_choice_follows_the_rates() -> None:
    rng = random.Random(1)
    rates = OutcomeRates(0.6, 0.3, 0.1)
    counts = Counter(rates.choose(rng) for _ in range(20_000))
    assert abs(counts[Outcome.DELIVERED] / 20_000 - 0.6) < 0.02
    assert abs(counts[Outcome.UNDELIVERED] / 20_000 - 0.3) < 0.02
    assert abs(counts[Outcome.FAILED] / 20_000 - 0.1) < 0.01


@pytest.mark.parametrize(
    ("rates", "only"),
    [
        ((1.0, 0.0, 0.0), Outcome.DELIVERED),
        ((0.0, 1.0, 0.0), Outcome.UNDELIVERED),
        ((0.0, 0.0, 1.0), Outcome.FAILED),
        ((0.4999999, 0.5, 0.0), None),  # sums to 1 within rounding: never FAILED
    ],
)
def test_degenerate_rates(rates, only) -> None:
    rng = random.Random(3)
    seen = {OutcomeRates(*rates).choose(rng) for _ in range(5000)}
    if only is not None:
        assert seen == {only}
    else:
        assert Outcome.FAILED not in seen


# -- store and counters ---------------------------------------------------------------------------


def test_submissions_are_counted_exactly_and_duplicates_kept() -> None:
    sim = make_sim()
    a1 = sim.submit(req("a"), T0)
    sim.submit(req("b"), T0 + 1)
    a2 = sim.submit(req("a"), T0 + 2)
    a3 = sim.submit(req("a"), T0 + 3)
    sim.submit(req("c"), T0 + 4)
    sim.submit(req("c"), T0 + 5)

    stats = sim.stats()
    assert stats["submissions"] == 6
    assert stats["unique_client_refs"] == 3
    assert stats["duplicates"] == {"a": 3, "c": 2}
    assert sim.client_ref_counts() == {"a": 3, "b": 1, "c": 2}
    assert sum(stats["by_outcome"].values()) == 6
    assert stats["first_submission_at"] == iso_utc(T0)
    assert stats["last_submission_at"] == iso_utc(T0 + 5)
    assert stats["receipts_pending"] == 6
    assert len({a1.id, a2.id, a3.id}) == 3
    assert [s.id for s in sim.lookup("a")] == [a1.id, a2.id, a3.id]
    assert sim.lookup("zzz") == []
    assert a1.to_json() == {
        "id": a1.id,
        "client_ref": "a",
        "to": "+34600000001",
        "status": "accepted",
        "submitted_at": iso_utc(T0),
    }


def test_rejections_are_counted_by_code() -> None:
    sim = make_sim()
    sim.count_rejection("invalid_request")
    sim.count_rejection("invalid_request")
    sim.count_rejection("unavailable")
    assert sim.stats()["rejected"] == {"invalid_request": 2, "unavailable": 1}
    assert sim.stats()["submissions"] == 0


def test_reset_forgets_everything_but_the_configuration() -> None:
    sim = make_sim()
    sim.apply(parse_control({"mode": "slow", "delay_ms": 5}))
    for i in range(3):
        sim.submit(req("x"), T0 + i)
    sim.count_rejection("unavailable")
    sim.reset()
    stats = sim.stats()
    assert stats["submissions"] == 0
    assert stats["unique_client_refs"] == 0
    assert stats["duplicates"] == {}
    assert stats["receipts_pending"] == 0
    assert stats["rejected"] == {}
    assert stats["first_submission_at"] is None
    assert sim.next_due() is None
    assert sim.failure == FailureMode("slow", delay_ms=5)


# -- receipt schedule ------------------------------------------------------------------------------


def test_receipts_are_due_within_the_delay_range_and_taken_in_due_order() -> None:
    sim = make_sim(delay=(50, 500))
    subs = [sim.submit(req(f"m{i}"), T0) for i in range(200)]
    dues = sorted(s.due_at for s in subs)
    assert all(T0 + 0.05 <= d <= T0 + 0.5 for d in dues)
    assert sim.next_due() == dues[0]

    assert sim.take_due(dues[0] - 0.001, 1000) is None
    taken = []
    while (batch := sim.take_due(T0 + 1.0, 64)) is not None:
        assert len(batch) <= 64
        taken.extend(s.due_at for s in batch.submissions)
        sim.receipts_sent(batch)
    assert taken == dues
    assert sim.stats()["receipts_sent"] == 200
    assert sim.stats()["receipts_pending"] == 0
    assert sim.stats()["sent_by_outcome"] == sim.stats()["by_outcome"]


def test_take_due_only_takes_what_is_due() -> None:
    sim = make_sim(delay=(100, 100))
    sim.submit(req("early"), T0)
    sim.submit(req("late"), T0 + 10)
    batch = sim.take_due(T0 + 0.1, 100)
    assert [s.client_ref for s in batch.submissions] == ["early"]
    assert sim.next_due() == pytest.approx(T0 + 10.1)


def test_receipt_payload_and_status_after_it_is_taken() -> None:
    sim = make_sim(rates=(0.0, 0.0, 1.0), delay=(100, 100))
    sub = sim.submit(req("m"), T0)
    assert sub.status == "accepted"
    batch = sim.take_due(T0 + 1, 10)
    assert batch.payload() == {
        "receipts": [
            {"id": sub.id, "client_ref": "m", "status": "failed", "error_code": "002", "done_at": iso_utc(T0 + 0.1)}
        ]
    }
    assert sim.lookup("m")[0].status == "failed"
    assert ERROR_CODES == {Outcome.DELIVERED: "000", Outcome.UNDELIVERED: "001", Outcome.FAILED: "002"}


def test_pending_counts_in_flight_and_settling_is_exactly_once() -> None:
    sim = make_sim(delay=(0, 0))
    for i in range(5):
        sim.submit(req(f"m{i}"), T0)
    batch = sim.take_due(T0, 3)
    assert len(batch) == 3
    assert sim.receipts_pending == 5  # 2 scheduled + 3 in flight
    sim.receipts_sent(batch)
    sim.receipts_sent(batch)  # a second settle is ignored
    sim.receipts_refused(batch)
    assert sim.stats()["receipts_sent"] == 3
    assert sim.stats()["receipts_failed_posts"] == 0
    assert sim.receipts_pending == 2

    batch = sim.take_due(T0, 10)
    sim.receipts_refused(batch)
    stats = sim.stats()
    assert (stats["receipts_failed_posts"], stats["receipts_rejected"], stats["receipts_pending"]) == (1, 2, 0)
    assert stats["receipts_sent"] == 3


def test_reset_makes_an_in_flight_batch_stale() -> None:
    sim = make_sim(delay=(0, 0))
    sim.submit(req("m"), T0)
    batch = sim.take_due(T0, 10)
    assert sim.is_current(batch)
    sim.reset()
    assert not sim.is_current(batch)
    sim.receipts_sent(batch)
    assert sim.stats()["receipts_sent"] == 0
    assert sim.receipts_pending == 0


def test_drop_pending_counts_scheduled_and_in_flight() -> None:
    sim = make_sim(delay=(0, 0))
    for i in range(7):
        sim.submit(req(f"m{i}"), T0)
    batch = sim.take_due(T0, 2)
    assert sim.drop_pending(batch) == 7
    assert sim.receipts_pending == 0
    assert sim.next_due() is None


def test_on_new_head_fires_only_when_the_earliest_due_changes() -> None:
    sim = make_sim(delay=(100, 100))
    calls = []
    sim.on_new_head = lambda: calls.append(sim.next_due())
    sim.submit(req("a"), T0 + 1)  # empty -> head
    sim.submit(req("b"), T0 + 2)  # later: no wake
    sim.submit(req("c"), T0)  # earlier: wake
    assert calls == [pytest.approx(T0 + 1.1), pytest.approx(T0 + 0.1)]


def test_same_seed_same_outcomes_and_delays() -> None:
    def run(seed: int) -> list[tuple[str, float]]:
        sim = make_sim(seed=seed)
        return [(s.outcome.value, s.due_at) for s in (sim.submit(req(f"m{i}"), T0) for i in range(100))]

    assert run(42) == run(42)
    assert run(42) != run(43)


# -- failure modes and control -------------------------------------------------------------------


def test_gate_per_mode() -> None:
    sim = make_sim()
    assert sim.gate().reject is None and sim.gate().delay_s == 0

    sim.apply(parse_control({"mode": "fail", "status": 503}))
    err = sim.gate().reject
    assert (err.status, err.code) == (503, "unavailable")
    sim.apply(parse_control({"mode": "fail", "status": 429}))
    err = sim.gate().reject
    assert (err.status, err.code) == (429, "throttled")
    sim.apply(parse_control({"mode": "fail"}))
    assert sim.gate().reject.status == 503
    sim.apply(parse_control({"mode": "fail", "status": 400}))
    err = sim.gate().reject
    assert (err.status, err.code) == (400, "rejected")

    sim.apply(parse_control({"mode": "slow", "delay_ms": 250}))
    assert sim.gate().delay_s == 0.25 and sim.gate().reject is None

    sim.apply(parse_control({"mode": "normal"}))
    assert sim.failure == FailureMode()
    assert sim.config()["mode"] == "normal" and "status" not in sim.config()


def test_partial_fail_draws_at_the_rate_without_shifting_outcomes() -> None:
    plain = make_sim(seed=5)
    partial = make_sim(seed=5)
    partial.apply(parse_control({"mode": "partial_fail", "fail_rate": 0.2, "status": 503}))
    failures = 0
    for i in range(5000):
        err = partial.roll_partial_failure()
        if err is not None:
            assert (err.status, err.code) == (503, "unavailable")
            failures += 1
        assert plain.submit(req(f"m{i}"), T0).outcome == partial.submit(req(f"m{i}"), T0).outcome
    assert 850 < failures < 1150
    assert plain.roll_partial_failure() is None

    partial.apply(parse_control({"mode": "partial_fail", "fail_rate": 1.0}))
    assert all(partial.roll_partial_failure() is not None for _ in range(100))
    partial.apply(parse_control({"mode": "partial_fail", "fail_rate": 0}))
    assert all(partial.roll_partial_failure() is None for _ in range(100))


def test_control_changes_rates_and_delays() -> None:
    sim = make_sim()
    sim.apply(
        parse_control({"outcome_rates": {"delivered": 0, "undelivered": 0, "failed": 1}, "receipt_delay_ms": [10, 10]})
    )
    sub = sim.submit(req("m"), T0)
    assert sub.outcome is Outcome.FAILED
    assert sub.due_at == pytest.approx(T0 + 0.01)
    assert sim.config() == {
        "mode": "normal",
        "outcome_rates": {"delivered": 0, "undelivered": 0, "failed": 1},
        "receipt_delay_ms": [10, 10],
    }


@pytest.mark.parametrize(
    "body",
    [
        {},
        [],
        {"mode": "sideways"},
        {"mode": "fail", "status": 200},
        {"mode": "fail", "status": "503"},
        {"mode": "fail", "delay_ms": 5},
        {"mode": "slow"},
        {"mode": "slow", "delay_ms": -1},
        {"mode": "partial_fail"},
        {"mode": "partial_fail", "fail_rate": 1.5},
        {"mode": "normal", "status": 503},
        {"status": 503},
        {"outcome_rates": {"delivered": 0.5, "undelivered": 0.2, "failed": 0.2}},
        {"outcome_rates": {"delivered": 1.0}},
        {"receipt_delay_ms": [500, 50]},
        {"receipt_delay_ms": [1]},
        {"receipt_delay_ms": [1, 2], "bogus": True},
    ],
)
def test_invalid_control_is_refused(body) -> None:
    with pytest.raises(ControlError):
        parse_control(body)


def test_invalid_control_changes_nothing() -> None:
    sim = make_sim()
    before = sim.config()
    with pytest.raises(ControlError):
        # valid mode, invalid rates: all or nothing
        sim.apply(parse_control({"mode": "refuse", "outcome_rates": {"delivered": 2, "undelivered": 0, "failed": 0}}))
    assert sim.config() == before


# -- settings -------------------------------------------------------------------------------------


def test_settings_defaults_and_env(monkeypatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith(("HERALD_SIM_", "HERALD_LOG_")):
            monkeypatch.delenv(key)
    s = SimulatorSettings()
    assert (s.host, s.port, s.control_port) == ("127.0.0.1", 28090, 28091)
    assert (s.delivered_rate, s.undelivered_rate, s.failed_rate) == (0.90, 0.07, 0.03)
    assert (s.receipt_delay_min_ms, s.receipt_delay_max_ms, s.receipt_batch_max) == (50, 500, 500)
    assert s.receipt_url == "http://127.0.0.1:28080/v1/receipts/sim"
    assert s.seed is None
    monkeypatch.setenv("HERALD_SIM_PORT", "40000")
    monkeypatch.setenv("HERALD_SIM_SEED", "9")
    monkeypatch.setenv("HERALD_SIM_API_TOKEN", "t0ps3cret")
    s = SimulatorSettings()
    assert (s.port, s.seed) == (40000, 9)
    assert "t0ps3cret" not in repr(s)
    assert "t0ps3cret" not in str(s.public_dict())
    assert "sim-receipt-secret" not in str(s.public_dict())
    assert (s.log_level, s.log_format) == ("INFO", "json")
    monkeypatch.setenv("HERALD_LOG_FORMAT", "text")
    monkeypatch.setenv("HERALD_LOG_LEVEL", "warning")
    assert (SimulatorSettings().log_level, SimulatorSettings().log_format) == ("WARNING", "text")
    monkeypatch.setenv("HERALD_SIM_LOG_LEVEL", "DEBUG")
    assert SimulatorSettings().log_level == "DEBUG"
    assert SimulatorSettings(log_format="json").log_format == "json"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delivered_rate": 0.5},
        {"failed_rate": 0.5, "delivered_rate": 0.43, "undelivered_rate": 0.06},
        {"receipt_delay_min_ms": 600},
        {"control_host": "0.0.0.0"},
        {"port": 28091, "control_port": 28091},
        {"receipt_url": "ftp://x"},
    ],
)
def test_settings_validation(kwargs) -> None:
    with pytest.raises(ValidationError):
        SimulatorSettings(**kwargs)


def test_fail_after_accept_takes_the_submission_then_answers_an_error() -> None:
    sim = make_sim()
    sim.apply(parse_control({"mode": "fail_after_accept"}))
    gate = sim.gate()
    assert gate.reject is None and gate.delay_s == 0  # the submission is taken...
    assert (gate.after_accept.status, gate.after_accept.code) == (504, "gateway_timeout")  # ...the answer is lost
    assert sim.config() == {**sim.config(), "mode": "fail_after_accept", "status": 504}
    sim.apply(parse_control({"mode": "fail_after_accept", "status": 502}))
    assert sim.gate().after_accept.status == 502
    with pytest.raises(ControlError):
        parse_control({"mode": "fail_after_accept", "delay_ms": 5})
    sim.apply(parse_control({"mode": "normal"}))
    assert sim.gate().after_accept is None
