"""The accuracy comparison's statistics: paired t-interval, verdicts, the learning gate."""

from __future__ import annotations

import math
import random

import pytest

from taylorshift.analysis.accuracy import (
    learns,
    majority_rate,
    mean_std,
    paired_difference,
    t975,
    verdict,
)


def test_paired_interval_matches_the_textbook_formula():
    a, b = [40.0, 42.0, 41.0], [39.0, 40.5, 41.5]
    d = paired_difference(a, b)
    diffs = [1.0, 1.5, -0.5]
    m = sum(diffs) / 3
    s = math.sqrt(sum((x - m) ** 2 for x in diffs) / 2)
    assert d.mean == pytest.approx(m) and d.std == pytest.approx(s) and d.n == 3
    assert d.high - d.mean == pytest.approx(4.303 * s / math.sqrt(3))
    assert d.mean - d.low == pytest.approx(d.high - d.mean)


def test_pairing_matters():
    """A shared per-seed offset cancels in the paired difference (an unpaired interval would be wide)."""
    base = [30.0, 45.0, 60.0]
    d = paired_difference([x + 0.2 for x in base], base)
    assert d.std == pytest.approx(0.0, abs=1e-12) and d.low == pytest.approx(0.2) and d.high == pytest.approx(0.2)


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = random.Random(0)
    hits, trials = 0, 2000
    for _ in range(trials):
        diffs = [0.7 + rng.gauss(0, 2.0) for _ in range(3)]
        d = paired_difference(diffs, [0.0] * 3)
        hits += d.low <= 0.7 <= d.high
    assert 0.93 < hits / trials < 0.97


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([50.1, 50.2, 50.0], [50.0, 50.0, 50.1], "within 1 point"),
        ([55.0, 56.0, 55.5], [50.0, 50.2, 50.1], "better"),
        ([45.0, 46.0, 45.5], [50.0, 50.2, 50.1], "worse"),
        ([40.0, 60.0, 50.0], [50.0, 50.0, 50.0], "inconclusive at this size"),
        ([50.3, 50.4, 50.35], [50.0, 50.0, 50.0], "within 1 point"),  # above 0 but inside ±1: within
    ],
)
def test_verdicts(a, b, expected):
    assert verdict(paired_difference(a, b)) == expected


def test_learning_gate_and_majority():
    assert majority_rate([0, 0, 1, 2]) == 50.0
    assert learns([28.0, 27.6, 28.2], 17.6) and not learns([20.0, 19.0, 18.0], 17.6)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="pair up"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([1.0, float("nan")], [1.0, 1.0])
    with pytest.raises(ValueError, match="df"):
        t975(0)
    with pytest.raises(ValueError, match="empty"):
        mean_std([])
    with pytest.raises(ValueError, match="margin"):
        verdict(paired_difference([1.0, 2.0], [1.0, 1.0]), margin=0)
    assert t975(2) == 4.303 and t975(100) == 1.96


def test_verdict_names_the_units_of_its_margin():
    from taylorshift.analysis.accuracy import paired_difference, verdict

    d = paired_difference([3.70, 3.71, 3.72], [3.70, 3.70, 3.71])
    assert verdict(d, margin=0.05, units="bits/byte") == "within 0.05 bits/byte"
    assert verdict(paired_difference([50.0, 50.2, 50.1], [50.1, 50.0, 50.0])) == "within 1 point"
