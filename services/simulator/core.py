"""Core of the gateway simulator: message store, counters, outcomes, receipt schedule, failure modes.

Pure logic with no I/O and no asyncio, so the HTTP face (``http.py``) and a later SMPP face
share it and it is unit-testable: every time is passed in as ``now`` (unix seconds, float)
and every random draw comes from an injected :class:`random.Random`.

The asyncio event loop is single-threaded and nothing here awaits, so each method runs
atomically and the counters are exact.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from shared.logging import mask_phone

MAX_BATCH = 1000
MAX_CLIENT_REF = 255
MAX_BODY = 10_000
MAX_SENDER = 16
MAX_SEGMENTS = 255
MAX_VALIDITY_S = 36_000
INVALID_DESTINATION_PREFIX = "+999"

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


class Outcome(str, Enum):
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"


#: SMPP-like error code carried in each receipt.
ERROR_CODES: dict[Outcome, str] = {
    Outcome.DELIVERED: "000",
    Outcome.UNDELIVERED: "001",
    Outcome.FAILED: "002",
}

MODES = ("normal", "fail", "slow", "refuse", "partial_fail", "fail_after_accept")


def iso_utc(ts: float) -> str:
    """Unix seconds -> ISO-8601 UTC with milliseconds, e.g. ``2025-11-25T15:35:00.123Z``."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_message_id() -> str:
    return "sim-" + uuid.uuid4().hex


# --------------------------------------------------------------------------------------------
# Requests


class RequestError(Exception):
    """A submission is refused. ``code`` is machine-readable; ``status`` the HTTP status for it."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    to: str
    body: str
    client_ref: str
    sender: str | None = None
    segments: int = 1
    validity_s: int | None = None  # seconds of validity the sender gave (None: the gateway's default)


def _invalid(message: str) -> RequestError:
    return RequestError("invalid_request", message)


def parse_submit(obj: Any) -> SubmitRequest:
    """Validate one message object. Raise :class:`RequestError` (always a permanent 400)."""
    if not isinstance(obj, dict):
        raise _invalid("a message must be a JSON object")
    unknown = obj.keys() - {"to", "from", "body", "client_ref", "segments", "validity_s"}
    if unknown:
        raise _invalid(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")

    client_ref = obj.get("client_ref")
    if not isinstance(client_ref, str) or not client_ref:
        raise _invalid("client_ref is required and must be a non-empty string")
    if len(client_ref) > MAX_CLIENT_REF:
        raise _invalid(f"client_ref must be at most {MAX_CLIENT_REF} characters")

    to = obj.get("to")
    if not isinstance(to, str) or not _E164.fullmatch(to):
        raise _invalid("to must be an E.164 number such as +34600000001")

    body = obj.get("body")
    if not isinstance(body, str) or not body:
        raise _invalid("body is required and must be a non-empty string")
    if len(body) > MAX_BODY:
        raise _invalid(f"body must be at most {MAX_BODY} characters")

    sender = obj.get("from")
    if sender is not None and (not isinstance(sender, str) or not 1 <= len(sender) <= MAX_SENDER):
        raise _invalid(f"from must be a string of 1 to {MAX_SENDER} characters")

    segments = obj.get("segments", 1)
    if type(segments) is not int or not 1 <= segments <= MAX_SEGMENTS:
        raise _invalid(f"segments must be an integer from 1 to {MAX_SEGMENTS}")

    validity_s = obj.get("validity_s")
    if validity_s is not None and (type(validity_s) is not int or not 1 <= validity_s <= MAX_VALIDITY_S):
        raise _invalid(f"validity_s must be an integer from 1 to {MAX_VALIDITY_S}")

    # Checked last, so that only a well-formed request gets the permanent destination error.
    if to.startswith(INVALID_DESTINATION_PREFIX):
        raise RequestError("invalid_destination", f"destination {mask_phone(to)} is not reachable")

    return SubmitRequest(to=to, body=body, client_ref=client_ref, sender=sender, segments=segments, validity_s=validity_s)


def client_ref_of(obj: Any) -> str | None:
    """The client_ref of a (possibly invalid) message object, for echoing in a batch result."""
    if isinstance(obj, dict):
        ref = obj.get("client_ref")
        if isinstance(ref, str):
            return ref
    return None


def parse_batch(obj: Any) -> list[Any]:
    """The ``messages`` list of a batch request (items are validated one by one later)."""
    if not isinstance(obj, dict) or set(obj) != {"messages"}:
        raise _invalid('a batch must be a JSON object {"messages": [...]}')
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list")
    if len(messages) > MAX_BATCH:
        raise _invalid(f"a batch holds at most {MAX_BATCH} messages, got {len(messages)}")
    return messages


# --------------------------------------------------------------------------------------------
# Configuration that can change at run time


@dataclass(frozen=True, slots=True)
class OutcomeRates:
    delivered: float
    undelivered: float
    failed: float

    def __post_init__(self) -> None:
        for name in ("delivered", "undelivered", "failed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} rate must be a number from 0 to 1")
        total = self.delivered + self.undelivered + self.failed
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"outcome rates must sum to 1, got {total:.6f}")

    def choose(self, rng: random.Random) -> Outcome:
        r = rng.random()
        if r < self.delivered:
            return Outcome.DELIVERED
        if r < self.delivered + self.undelivered:
            return Outcome.UNDELIVERED
        if self.failed > 0:
            return Outcome.FAILED
        # The rates sum to 1 only within rounding: the tail goes to the last non-zero outcome.
        return Outcome.UNDELIVERED if self.undelivered > 0 else Outcome.DELIVERED

    def to_json(self) -> dict[str, float]:
        return {"delivered": self.delivered, "undelivered": self.undelivered, "failed": self.failed}


@dataclass(frozen=True, slots=True)
class FailureMode:
    """How submissions are answered. ``status`` for fail/partial_fail, ``delay_ms`` for slow."""

    mode: str = "normal"
    status: int | None = None
    delay_ms: int = 0
    fail_rate: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode in ("fail", "partial_fail", "fail_after_accept"):
            out["status"] = self.status
        if self.mode == "slow":
            out["delay_ms"] = self.delay_ms
        if self.mode == "partial_fail":
            out["fail_rate"] = self.fail_rate
        return out


class ControlError(ValueError):
    """A control request is malformed; nothing was changed."""


@dataclass(frozen=True, slots=True)
class ControlUpdate:
    """A validated control request. Any field left ``None`` is left as it is."""

    mode: FailureMode | None = None
    outcome_rates: OutcomeRates | None = None
    receipt_delay_ms: tuple[int, int] | None = None


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ControlError(f"{name} must be an integer from {lo} to {hi}")
    return value


def _error_status(value: Any) -> int:
    return _int(value, "status", 400, 599)


def parse_control(obj: Any) -> ControlUpdate:
    """Validate a ``POST /control`` body. All of it is checked before anything is applied."""
    if not isinstance(obj, dict) or not obj:
        raise ControlError("control body must be a non-empty JSON object")
    unknown = obj.keys() - {"mode", "status", "delay_ms", "fail_rate", "outcome_rates", "receipt_delay_ms"}
    if unknown:
        raise ControlError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")

    mode: FailureMode | None = None
    if "mode" in obj:
        name = obj["mode"]
        if name not in MODES:
            raise ControlError(f"mode must be one of {', '.join(MODES)}")
        allowed = {
            "normal": set(),
            "refuse": set(),
            "fail": {"status"},
            "slow": {"delay_ms"},
            "partial_fail": {"status", "fail_rate"},
            "fail_after_accept": {"status"},
        }[name]
        extra = {"status", "delay_ms", "fail_rate"} & obj.keys() - allowed
        if extra:
            raise ControlError(f"mode {name} takes no {', '.join(sorted(extra))}")
        if name == "fail":
            mode = FailureMode("fail", status=_error_status(obj.get("status", 503)))
        elif name == "fail_after_accept":
            mode = FailureMode("fail_after_accept", status=_error_status(obj.get("status", 504)))
        elif name == "slow":
            if "delay_ms" not in obj:
                raise ControlError("mode slow needs delay_ms")
            mode = FailureMode("slow", delay_ms=_int(obj["delay_ms"], "delay_ms", 0, 600_000))
        elif name == "partial_fail":
            rate = obj.get("fail_rate")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ControlError("mode partial_fail needs fail_rate, a number from 0 to 1")
            mode = FailureMode("partial_fail", status=_error_status(obj.get("status", 503)), fail_rate=float(rate))
        else:
            mode = FailureMode(name)
    elif {"status", "delay_ms", "fail_rate"} & obj.keys():
        raise ControlError("status, delay_ms and fail_rate go with a mode")

    rates: OutcomeRates | None = None
    if "outcome_rates" in obj:
        raw = obj["outcome_rates"]
        if not isinstance(raw, dict) or set(raw) != {"delivered", "undelivered", "failed"}:
            raise ControlError("outcome_rates must have exactly delivered, undelivered and failed")
        try:
            rates = OutcomeRates(raw["delivered"], raw["undelivered"], raw["failed"])
        except ValueError as exc:
            raise ControlError(str(exc)) from None

    delay: tuple[int, int] | None = None
    if "receipt_delay_ms" in obj:
        raw = obj["receipt_delay_ms"]
        if not isinstance(raw, list) or len(raw) != 2:
            raise ControlError("receipt_delay_ms must be [min, max]")
        lo = _int(raw[0], "receipt_delay_ms min", 0, 3_600_000)
        hi = _int(raw[1], "receipt_delay_ms max", 0, 3_600_000)
        if lo > hi:
            raise ControlError("receipt_delay_ms min must not exceed max")
        delay = (lo, hi)

    return ControlUpdate(mode=mode, outcome_rates=rates, receipt_delay_ms=delay)


# --------------------------------------------------------------------------------------------
# Store and receipts


@dataclass(slots=True, eq=False)
class Submission:
    """One accepted submission. Its receipt is due at ``due_at`` with ``outcome``."""

    id: str
    client_ref: str
    to: str
    sender: str | None
    segments: int
    submitted_at: float
    outcome: Outcome
    due_at: float
    done: bool = False  # the receipt has left the schedule (it is being or has been posted)
    validity_s: int | None = None  # the validity it came with (None: none given)

    @property
    def status(self) -> str:
        return self.outcome.value if self.done else "accepted"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_ref": self.client_ref,
            "to": self.to,
            "status": self.status,
            "submitted_at": iso_utc(self.submitted_at),
            **({"from": self.sender} if self.sender is not None else {}),
            **({"validity_s": self.validity_s} if self.validity_s is not None else {}),
        }

    def receipt_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "client_ref": self.client_ref,
            "status": self.outcome.value,
            "error_code": ERROR_CODES[self.outcome],
            "done_at": iso_utc(self.due_at),
        }


@dataclass(slots=True)
class ReceiptBatch:
    """Receipts taken from the schedule for one POST. Settled exactly once by the sender."""

    generation: int
    submissions: list[Submission]
    settled: bool = False

    def __len__(self) -> int:
        return len(self.submissions)

    def payload(self) -> dict[str, list[dict[str, str]]]:
        return {"receipts": [s.receipt_json() for s in self.submissions]}


@dataclass(slots=True)
class Gate:
    """What to do with a submission request before looking at it."""

    delay_s: float = 0.0
    reject: RequestError | None = None
    after_accept: RequestError | None = None  # take the submissions, then answer this error


def unavailable(status: int) -> RequestError:
    """The error a failure mode answers with: ``throttled`` for 429, ``rejected`` for another 4xx."""
    if status == 429:
        return RequestError("throttled", "too many requests, slow down", status)
    if status < 500:
        return RequestError("rejected", f"the gateway refuses submissions (simulated HTTP {status})", status)
    return RequestError("unavailable", "the gateway is unavailable, try again later", status)


def gateway_timeout(status: int) -> RequestError:
    """The error of ``fail_after_accept``: answered after the submissions were taken."""
    return RequestError("gateway_timeout", "no answer from the upstream in time", status)


@dataclass
class _Counters:
    submissions: int = 0
    first_at: float | None = None
    last_at: float | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    by_outcome: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})
    sent_by_outcome: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})
    receipts_sent: int = 0
    receipts_rejected: int = 0
    receipts_failed_posts: int = 0
    receipt_posts: int = 0
    receipt_post_retries: int = 0


class Simulator:
    """The gateway: accepts submissions, counts them exactly, schedules and settles receipts."""

    def __init__(
        self,
        *,
        rates: OutcomeRates,
        receipt_delay_ms: tuple[int, int],
        rng: random.Random,
        fault_rng: random.Random | None = None,
        id_factory: Callable[[], str] = new_message_id,
    ) -> None:
        self.rates = rates
        self.receipt_delay_ms = receipt_delay_ms
        self.failure = FailureMode()
        self._rng = rng
        # A separate stream for failure-mode draws so partial_fail does not shift the outcomes.
        self._fault_rng = fault_rng if fault_rng is not None else random.Random(rng.getrandbits(64))
        self._new_id = id_factory
        #: Called (with no argument) when a receipt becomes the earliest due one; the receipt
        #: sender sets this to wake itself up. Must not raise.
        self.on_new_head: Callable[[], None] | None = None
        self._seq = itertools.count()
        self._generation = 0
        #: Other faces' counters shown in ``stats()`` under their name (e.g. ``"smpp"``).
        self.extra_stats: dict[str, Callable[[], dict[str, Any]]] = {}
        self._init_state()

    @property
    def generation(self) -> int:
        """Changes at every reset: work taken before it is abandoned."""
        return self._generation

    def _init_state(self) -> None:
        self._by_ref: dict[str, list[Submission]] = {}
        self._duplicates: set[str] = set()
        self._schedule: list[tuple[float, int, Submission]] = []
        self._in_flight = 0
        self._generation += 1
        self.c = _Counters()

    # -- configuration -----------------------------------------------------------------------

    def apply(self, update: ControlUpdate) -> None:
        if update.mode is not None:
            self.failure = update.mode
        if update.outcome_rates is not None:
            self.rates = update.outcome_rates
        if update.receipt_delay_ms is not None:
            self.receipt_delay_ms = update.receipt_delay_ms

    def config(self) -> dict[str, Any]:
        return {
            **self.failure.to_json(),
            "outcome_rates": self.rates.to_json(),
            "receipt_delay_ms": list(self.receipt_delay_ms),
        }

    # -- submissions -------------------------------------------------------------------------

    def gate(self) -> Gate:
        """Failure-mode decision for a whole request (single or batch)."""
        mode = self.failure
        if mode.mode == "fail":
            return Gate(reject=unavailable(mode.status or 503))
        if mode.mode == "slow":
            return Gate(delay_s=mode.delay_ms / 1000.0)
        if mode.mode == "fail_after_accept":
            # like a proxy that timed out while the provider kept working
            return Gate(after_accept=gateway_timeout(mode.status or 504))
        if mode.mode == "refuse":
            # Only reached by a request that raced the closing of the listener.
            return Gate(reject=unavailable(503))
        return Gate()

    def roll_partial_failure(self) -> RequestError | None:
        """In partial_fail mode, the error for this one message if it is drawn to fail."""
        mode = self.failure
        if mode.mode == "partial_fail" and self._fault_rng.random() < mode.fail_rate:
            return unavailable(mode.status or 503)
        return None

    def count_rejection(self, code: str) -> None:
        self.c.rejected[code] = self.c.rejected.get(code, 0) + 1

    def submit(self, req: SubmitRequest, now: float, *, schedule_receipt: bool = True) -> Submission:
        """Record an accepted submission and schedule its receipt. Duplicates are kept.

        ``schedule_receipt=False``: recorded and counted the same, but its receipt is left to the
        caller (the SMPP face sends receipts as deliver_sm, not as HTTP posts).
        """
        outcome = self.rates.choose(self._rng)
        lo, hi = self.receipt_delay_ms
        due = now + self._rng.uniform(lo, hi) / 1000.0
        sub = Submission(
            id=self._new_id(),
            client_ref=req.client_ref,
            to=req.to,
            sender=req.sender,
            segments=req.segments,
            submitted_at=now,
            outcome=outcome,
            due_at=due,
            validity_s=req.validity_s,
        )
        same = self._by_ref.get(req.client_ref)
        if same is None:
            self._by_ref[req.client_ref] = [sub]
        else:
            same.append(sub)
            self._duplicates.add(req.client_ref)
        c = self.c
        c.submissions += 1
        if c.first_at is None:
            c.first_at = now
        c.last_at = now
        c.by_outcome[outcome.value] += 1
        if not schedule_receipt:
            return sub

        schedule = self._schedule
        new_head = not schedule or due < schedule[0][0]
        heapq.heappush(schedule, (due, next(self._seq), sub))
        if new_head and self.on_new_head is not None:
            self.on_new_head()
        return sub

    def lookup(self, client_ref: str) -> list[Submission]:
        return list(self._by_ref.get(client_ref, ()))

    def timeline(self) -> dict[int, tuple[int, int]]:
        """Unix second → (submissions, segments) accepted in it: what throttle tests measure."""
        seconds: dict[int, list[int]] = {}
        for subs in self._by_ref.values():
            for sub in subs:
                slot = seconds.setdefault(int(sub.submitted_at), [0, 0])
                slot[0] += 1
                slot[1] += sub.segments
        return {second: (n, segs) for second, (n, segs) in sorted(seconds.items())}

    # -- receipts ----------------------------------------------------------------------------

    def next_due(self) -> float | None:
        return self._schedule[0][0] if self._schedule else None

    def take_due(self, now: float, limit: int) -> ReceiptBatch | None:
        """Take up to ``limit`` receipts due at ``now`` (earliest first) for one POST."""
        schedule = self._schedule
        taken: list[Submission] = []
        while schedule and schedule[0][0] <= now and len(taken) < limit:
            sub = heapq.heappop(schedule)[2]
            sub.done = True
            taken.append(sub)
        if not taken:
            return None
        self._in_flight += len(taken)
        return ReceiptBatch(self._generation, taken)

    def is_current(self, batch: ReceiptBatch) -> bool:
        """False once the batch is settled or a reset has happened since it was taken."""
        return not batch.settled and batch.generation == self._generation

    def _settle(self, batch: ReceiptBatch) -> bool:
        if not self.is_current(batch):
            return False
        batch.settled = True
        self._in_flight -= len(batch)
        return True

    def note_post(self) -> None:
        self.c.receipt_posts += 1

    def note_post_retry(self) -> None:
        self.c.receipt_post_retries += 1

    def receipts_sent(self, batch: ReceiptBatch) -> None:
        """The receiver answered 2xx."""
        if self._settle(batch):
            self.c.receipts_sent += len(batch)
            sent = self.c.sent_by_outcome
            for sub in batch.submissions:
                sent[sub.outcome.value] += 1

    def receipts_refused(self, batch: ReceiptBatch) -> None:
        """The receiver answered 4xx: the post is not retried and its receipts are lost."""
        if self._settle(batch):
            self.c.receipts_failed_posts += 1
            self.c.receipts_rejected += len(batch)

    def drop_pending(self, batch: ReceiptBatch | None = None) -> int:
        """Shutdown: forget every scheduled receipt (and ``batch``, if unsettled). Returns how many."""
        dropped = len(self._schedule)
        self._schedule.clear()
        if batch is not None and self._settle(batch):
            dropped += len(batch)
        return dropped

    @property
    def receipts_pending(self) -> int:
        """Scheduled plus taken-but-not-yet-settled receipts."""
        return len(self._schedule) + self._in_flight

    # -- stats -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every submission, counter and pending receipt (an in-flight batch is abandoned).

        The run-time configuration (mode, rates, delays) is kept.
        """
        self._init_state()

    def stats(self) -> dict[str, Any]:
        c = self.c
        extra = {name: provider() for name, provider in self.extra_stats.items()}
        return extra | {
            "submissions": c.submissions,
            "unique_client_refs": len(self._by_ref),
            "duplicates": {ref: len(self._by_ref[ref]) for ref in self._duplicates},
            "receipts_sent": c.receipts_sent,
            "receipts_pending": self.receipts_pending,
            "receipts_failed_posts": c.receipts_failed_posts,
            "receipts_rejected": c.receipts_rejected,
            "receipt_posts": c.receipt_posts,
            "receipt_post_retries": c.receipt_post_retries,
            "by_outcome": dict(c.by_outcome),
            "sent_by_outcome": dict(c.sent_by_outcome),
            "rejected": dict(c.rejected),
            "first_submission_at": iso_utc(c.first_at) if c.first_at is not None else None,
            "last_submission_at": iso_utc(c.last_at) if c.last_at is not None else None,
        }

    @property
    def unique_client_refs(self) -> int:
        return len(self._by_ref)

    @property
    def duplicated_client_refs(self) -> int:
        return len(self._duplicates)

    def client_ref_counts(self) -> dict[str, int]:
        return {ref: len(subs) for ref, subs in self._by_ref.items()}
