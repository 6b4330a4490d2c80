"""Gateway health: a circuit breaker fed with submission outcomes, time passed in.

Closed: traffic flows. Open: the gateway is skipped while healthier ones exist, after too
many errors (connection refused, timeouts, 5xx) or too slow answers in the recent window.
After ``cooldown_s`` it is half-open: traffic may try it again, and one good answer
closes it, one bad answer opens it for another cooldown.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Thresholds:
    window_s: float = 60.0
    min_samples: int = 10
    error_rate: float = 0.5
    slow_s: float = 10.0  # an answer slower than this counts as bad
    cooldown_s: float = 30.0


@dataclass
class GatewayHealth:
    thresholds: Thresholds = field(default_factory=Thresholds)
    state: State = State.CLOSED
    opened_at: float = 0.0
    reason: str = ""
    samples: deque[tuple[float, bool]] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        horizon = now - self.thresholds.window_s
        while self.samples and self.samples[0][0] < horizon:
            self.samples.popleft()

    def record(self, now: float, ok: bool, latency_s: float = 0.0, count: int = 1) -> State:
        """Feed ``count`` outcomes of one call; return the state afterwards."""
        good = ok and latency_s <= self.thresholds.slow_s
        if self.state is State.HALF_OPEN:
            if good:
                self.state, self.reason = State.CLOSED, ""
                self.samples.clear()
            else:
                self._open(now, "still failing after cooldown" if not ok else f"answers slower than {self.thresholds.slow_s}s")
            return self.state
        for _ in range(count):
            self.samples.append((now, good))
        self._trim(now)
        if self.state is State.CLOSED and len(self.samples) >= self.thresholds.min_samples:
            bad = sum(1 for _, g in self.samples if not g)
            if bad / len(self.samples) >= self.thresholds.error_rate:
                self._open(now, f"{bad} of the last {len(self.samples)} submissions failed or were slow")
        return self.state

    def trip(self, now: float, reason: str) -> None:
        """Open at once (the connection itself is down)."""
        self._open(now, reason)

    def _open(self, now: float, reason: str) -> None:
        self.state, self.opened_at, self.reason = State.OPEN, now, reason
        self.samples.clear()

    def available(self, now: float) -> bool:
        if self.state is State.OPEN and now - self.opened_at >= self.thresholds.cooldown_s:
            self.state = State.HALF_OPEN
        return self.state is not State.OPEN
