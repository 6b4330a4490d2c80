"""A/B test maths: the two-proportion z-test and the choice of a winner. Pure, stdlib only.

For variants A and B with x successes out of n trials (e.g. unique clickers out of
delivered messages): p = x / n, the pooled rate p̂ = (x_A + x_B) / (n_A + n_B), the
standard error SE = sqrt(p̂ (1 − p̂) (1/n_A + 1/n_B)), z = (p_A − p_B) / SE, and the
two-sided p-value = erfc(|z| / √2) (= 2 · (1 − Φ(|z|))).

The winner is the variant with the best rate; with no trials at all there is none (``no_data``). It wins *significantly* when every variant
has at least ``min_sample`` trials and its test against every other variant has a p-value
below ``alpha`` (Bonferroni-corrected: alpha / (k − 1) for k variants).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    successes: int
    trials: int

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else 0.0


@dataclass(frozen=True, slots=True)
class ZTest:
    z: float
    p_value: float


def two_proportion_z(a: Sample, b: Sample) -> ZTest:
    """z and two-sided p-value of H0: rate(a) = rate(b). No information (a zero trial count,
    or both rates 0 or 1) gives z = 0, p = 1."""
    if a.trials <= 0 or b.trials <= 0:
        return ZTest(0.0, 1.0)
    pooled = (a.successes + b.successes) / (a.trials + b.trials)
    variance = pooled * (1 - pooled) * (1 / a.trials + 1 / b.trials)
    if variance <= 0:
        return ZTest(0.0, 1.0)
    z = (a.rate - b.rate) / math.sqrt(variance)
    return ZTest(z, math.erfc(abs(z) / math.sqrt(2)))


@dataclass(frozen=True)
class Decision:
    winner: str | None
    significant: bool
    reason: str  # significant, not_significant, insufficient_sample, single_variant, no_variants, no_data
    detail: dict[str, Any]


def decide(samples: Sequence[Sample], *, alpha: float = 0.05, min_sample: int = 0, metric: str = "") -> Decision:
    ranked = sorted(samples, key=lambda s: (-s.rate, -s.trials, s.name))
    detail: dict[str, Any] = {
        "metric": metric,
        "alpha": alpha,
        "min_sample": min_sample,
        "variants": [
            {"name": s.name, "successes": s.successes, "trials": s.trials, "rate": round(s.rate, 6)} for s in samples
        ],
        "comparisons": [],
    }
    if not ranked:
        return Decision(None, False, "no_variants", {**detail, "significant": False, "reason": "no_variants"})
    if all(s.trials <= 0 for s in ranked):  # nothing sent or delivered yet: no variant leads
        return Decision(None, False, "no_data", {**detail, "winner": None, "significant": False, "reason": "no_data"})
    best = ranked[0]
    if len(ranked) == 1:
        reason = "single_variant"
        return Decision(best.name, False, reason, {**detail, "winner": best.name, "significant": False, "reason": reason})
    threshold = alpha / (len(ranked) - 1)
    tests = []
    for other in ranked[1:]:
        t = two_proportion_z(best, other)
        tests.append(t)
        detail["comparisons"].append(
            {"a": best.name, "b": other.name, "z": round(t.z, 6), "p_value": round(t.p_value, 8)}
        )
    if any(s.trials < min_sample for s in ranked):
        reason, significant = "insufficient_sample", False
    elif all(t.p_value < threshold and t.z > 0 for t in tests):
        reason, significant = "significant", True
    else:
        reason, significant = "not_significant", False
    detail.update(winner=best.name, significant=significant, reason=reason, threshold=threshold)
    return Decision(best.name, significant, reason, detail)
