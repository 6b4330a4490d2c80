"""The two-proportion z-test on a fixed data set, checked against numbers computed by hand
and against an independent numerical integration of the normal density (no erfc)."""

from __future__ import annotations

import math

import pytest

from services.reports.abtest import Sample, decide, two_proportion_z

# Data set 1: A 120 clicks / 1000 delivered, B 90 / 1000.
#   p_A = 0.12, p_B = 0.09, pooled p = 210 / 2000 = 0.105
#   SE = sqrt(0.105 · 0.895 · (1/1000 + 1/1000)) = sqrt(0.00018795) = 0.0137095
#   z = 0.03 / 0.0137095 = 2.1883; two-sided p = 2 · (1 − Φ(2.1883)) ≈ 2 · 0.01433 = 0.0287
# Data set 2: A 45 / 500, B 30 / 480.
#   p_A = 0.09, p_B = 0.0625, pooled p = 75 / 980 = 0.076531
#   SE = sqrt(0.076531 · 0.923469 · (1/500 + 1/480)) = 0.016987; z = 0.0275 / 0.016987 = 1.6189; p ≈ 0.1055
A1, B1 = Sample("A", 120, 1000), Sample("B", 90, 1000)
A2, B2 = Sample("A", 45, 500), Sample("B", 30, 480)


def tail_by_simpson(z: float, steps: int = 20_000) -> float:
    """2 · ∫_|z|^10 φ(t) dt by Simpson's rule: an independent check of erfc."""
    a, b = abs(z), 10.0
    h = (b - a) / steps
    pdf = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    total = pdf(a) + pdf(b) + sum((4 if i % 2 else 2) * pdf(a + i * h) for i in range(1, steps))
    return 2 * total * h / 3


def test_fixed_data_set_one() -> None:
    t = two_proportion_z(A1, B1)
    assert t.z == pytest.approx(2.1883, abs=1e-4)
    assert t.p_value == pytest.approx(0.0287, abs=1e-4)
    assert t.p_value == pytest.approx(tail_by_simpson(t.z), rel=1e-9)
    assert two_proportion_z(B1, A1).z == pytest.approx(-t.z)


def test_fixed_data_set_two() -> None:
    t = two_proportion_z(A2, B2)
    assert t.z == pytest.approx(1.6189, abs=1e-4)
    assert t.p_value == pytest.approx(0.1055, abs=1e-4)
    assert t.p_value == pytest.approx(tail_by_simpson(t.z), rel=1e-9)


def test_degenerate_inputs_carry_no_evidence() -> None:
    assert two_proportion_z(Sample("A", 0, 0), B1).p_value == 1.0
    assert two_proportion_z(Sample("A", 0, 100), Sample("B", 0, 100)).z == 0.0
    assert two_proportion_z(Sample("A", 100, 100), Sample("B", 50, 50)).p_value == 1.0


def test_a_significant_winner() -> None:
    d = decide([B1, A1], alpha=0.05, min_sample=500, metric="click_rate")
    assert (d.winner, d.significant, d.reason) == ("A", True, "significant")
    assert d.detail["comparisons"][0]["p_value"] == pytest.approx(0.0287, abs=1e-4)
    assert d.detail["metric"] == "click_rate"


def test_not_significant_and_too_small_samples_still_name_the_best() -> None:
    d = decide([A2, B2], alpha=0.05)
    assert (d.winner, d.significant, d.reason) == ("A", False, "not_significant")
    d = decide([A1, B1], alpha=0.05, min_sample=5000)
    assert (d.winner, d.significant, d.reason) == ("A", False, "insufficient_sample")


def test_three_variants_use_a_bonferroni_threshold() -> None:
    c = Sample("C", 95, 1000)
    d = decide([A1, B1, c], alpha=0.05)
    # A vs B: p = 0.0287 < 0.05 but not < 0.025 (0.05 / 2 comparisons)
    assert d.detail["threshold"] == pytest.approx(0.025)
    assert (d.winner, d.significant) == ("A", False)
    assert decide([A1, Sample("B", 60, 1000), Sample("C", 70, 1000)], alpha=0.05).significant


def test_no_or_one_variant() -> None:
    assert decide([], alpha=0.05).winner is None
    assert decide([A1], alpha=0.05).reason == "single_variant"


def test_no_trials_no_winner() -> None:
    d = decide([Sample("A", 0, 0), Sample("B", 0, 0)], alpha=0.05)
    assert (d.winner, d.significant, d.reason) == (None, False, "no_data")
    assert decide([Sample("A", 0, 0)], alpha=0.05).winner is None
