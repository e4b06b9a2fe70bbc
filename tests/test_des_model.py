"""The discrete-event model of parallel mode (scripts/des_model.py) against the cases that can be worked out by
hand: free ML side, ML-bound, trajectory-bound, and the ml_ranks sizing rule."""

from __future__ import annotations

import sys

import pytest

from workflow import REPO

sys.path.insert(0, str(REPO / "scripts"))
from des_model import Costs, Setup, ml_ranks_needed, simulate  # noqa: E402


def test_free_ml_side_keeps_every_group_busy():
    outcome = simulate(Costs(reference_s=10.0, md_s=0.0, training_s=0.0, grows=False),
                       Setup(groups=8, trajectories=8, labels=80))
    assert outcome.busy_fraction == pytest.approx(1.0)
    assert outcome.wall_s == pytest.approx(100.0)  # 10 rounds of 8 labels


def test_ml_bound_busy_fraction_is_reference_over_k_times_ml_time():
    """One ML rank producing a label every 5 s feeds 4 groups that need one every 2.5 s: half busy."""
    costs = Costs(reference_s=10.0, md_s=3.0, training_s=2.0, grows=False)
    outcome = simulate(costs, Setup(groups=4, trajectories=16, labels=400))
    assert outcome.busy_fraction == pytest.approx(10.0 / (4 * 5.0), abs=0.02)
    assert outcome.ml_busy_fraction == pytest.approx(1.0, abs=0.02)
    fed = simulate(costs, Setup(groups=4, trajectories=16, labels=400, ml_ranks=ml_ranks_needed(costs, 4, 1)))
    assert ml_ranks_needed(costs, 4, 1) == 2 and fed.busy_fraction > 0.98


def test_too_few_trajectories_leave_groups_idle():
    """2 trajectories cycling through 1 s MD + 10 s reference + 1 s training keep 2 of 4 groups busy 10/12 s
    (2 ML ranks: the trajectories never queue for the ML side); with one ML rank they queue 1 s a cycle."""
    costs = Costs(reference_s=10.0, md_s=1.0, training_s=1.0, grows=False)
    outcome = simulate(costs, Setup(groups=4, trajectories=2, labels=200, ml_ranks=2))
    assert outcome.busy_fraction == pytest.approx(2 * 10.0 / (4 * 12.0), abs=0.01)
    shared = simulate(costs, Setup(groups=4, trajectories=2, labels=200))
    assert shared.busy_fraction == pytest.approx(2 * 10.0 / (4 * 13.0), abs=0.01)


def test_training_that_grows_with_the_data_makes_the_ml_side_the_bottleneck():
    steady = Costs(reference_s=10.0, md_s=0.5, training_s=1.0, training_set=10, grows=False)
    growing = Costs(reference_s=10.0, md_s=0.5, training_s=1.0, training_set=10)
    setup = Setup(groups=4, trajectories=8, labels=400)
    assert simulate(steady, setup).busy_fraction > 0.95
    assert simulate(growing, setup).busy_fraction < 0.5  # training at 300 structures: 30 s per label
    assert ml_ranks_needed(growing, 4, 310) == math_ceil(4 * (0.5 + 31.0) / 10.0)


def math_ceil(value: float) -> int:
    return int(-(-value // 1))
