"""Per-key rate limits: the sliding-window arithmetic, shared by the services that keep counters.

A sliding window over minute counters: the estimate for "the last 60 seconds" is the current
minute's count plus the previous minute's count weighted by how much of it is still inside the
window. Pure functions only: each service counts in a table of its own, with its own statements
(ingest's API: services/ingest/ratelimit.py on ``rate_counters``; the scheduler's journey sends:
services/scheduler/journeys/limits.py on ``journey_rate_counters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

LEASE_MAX = 100  # units per lease at most
LEASE_S = 1.0  # a lease is used within this long, or given back with the next one
DENIAL_S = 0.5  # a refusal is reused this long before the database is asked again


def lease_size(limit: int) -> int:
    """Units one lease takes: 0.5 % of the limit, 1 to LEASE_MAX (1: count each request)."""
    return max(1, min(LEASE_MAX, limit // 200))


def grant(row: dict[str, Any], chunk: int, rpm: int, mpm: int) -> int:
    """How many of a leased ``chunk`` fit under both limits (the row counts the whole chunk)."""
    elapsed = float(row["elapsed"])
    room_r = rpm - estimate(int(row["prev_requests"]), int(row["requests"]) - chunk, elapsed)
    room_m = mpm - estimate(int(row["prev_messages"]), int(row["messages"]) - chunk, elapsed)
    return max(0, min(chunk, math.floor(room_r), math.floor(room_m)))


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0
    limit: str = ""  # which limit refused: "requests" or "messages"


def estimate(previous: int, current: int, elapsed_s: float) -> float:
    return previous * max(0.0, 1 - elapsed_s / 60) + current


def wait_until_below(previous: int, current: int, elapsed_s: float, limit: int) -> int:
    """Seconds until the sliding estimate drops to ``limit`` (the next minute resets current)."""
    over = estimate(previous, current, elapsed_s) - limit
    if over <= 0:
        return 0
    to_next_minute = 60 - elapsed_s
    if previous > 0:
        t = over * 60 / previous  # the previous minute's weight drains at previous/60 per second
        if t < to_next_minute:
            return max(1, math.ceil(t))
    # After the minute turns, current becomes previous and drains the same way.
    residual = current - limit
    return max(1, math.ceil(to_next_minute + max(0.0, residual) * 60 / max(current, 1)))


def judge_one(previous: int, current: int, elapsed_s: float, limit: int, name: str) -> Verdict:
    """One limit's verdict on counts that include what is being asked for."""
    if estimate(previous, current, elapsed_s) > limit:
        return Verdict(False, wait_until_below(previous, current, elapsed_s, limit), name)
    return Verdict(True)


def judge(row: dict[str, float], messages: int, rpm: int, mpm: int) -> Verdict:
    elapsed = float(row["elapsed"])
    verdict = judge_one(int(row["prev_requests"]), int(row["requests"]), elapsed, rpm, "requests")
    if verdict.allowed and messages:
        verdict = judge_one(int(row["prev_messages"]), int(row["messages"]), elapsed, mpm, "messages")
    return verdict
