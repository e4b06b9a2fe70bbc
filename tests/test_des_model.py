"""The discrete-event model of parallel mode (scripts/des_model.py) against the cases that can be worked out by
hand: free ML side, ML-bound, MD-bound, trajectory-bound, members training on their own ML ranks, and the
ml_ranks sizing rule."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from workflow import REPO

sys.path.insert(0, str(REPO / "scripts"))
from des_model import (Costs, Setup, md_bound, member_owners, ml_ranks_needed, rank_work_per_label_s,  # noqa: E402
                       simulate)


def test_free_ml_side_keeps_every_group_busy():
    outcome = simulate(Costs(reference_s=10.0, md_s=0.0, training_s=0.0, grows=False),
                       Setup(groups=8, trajectories=8, labels=80))
    assert outcome.busy_fraction == pytest.approx(1.0)
    assert outcome.wall_s == pytest.approx(100.0)  # 10 rounds of 8 labels


def test_ml_bound_busy_fraction_is_reference_over_k_times_ml_time():
    """One ML rank producing a label every 5 s feeds 4 groups that need one every 2.5 s: half busy. On one rank
    the members' shares run back to back, so the ensemble size does not matter."""
    costs = Costs(reference_s=10.0, md_s=3.0, training_s=2.0, grows=False)
    outcome = simulate(costs, Setup(groups=4, trajectories=16, labels=400))
    assert outcome.busy_fraction == pytest.approx(10.0 / (4 * 5.0), abs=0.02)
    assert outcome.ml_busy_fraction == pytest.approx(1.0, abs=0.02)
    for ensemble_size in (1, 4):
        assert simulate(costs, Setup(groups=4, trajectories=16, labels=400, ensemble_size=ensemble_size)) == outcome


def test_md_bound_busy_fraction_is_reference_over_k_times_md_time():
    """With E + 1 = 3 ML ranks rank 0 only runs MD (2.5 s + 0.5 s bookkeeping a label) and ranks 1, 2 train one
    member each (1 s a label): 8 groups needing a label every 1.25 s get one every 3 s, busy 10 / (8 x 3); rank 0 is
    busy all the time, ranks 1 and 2 a third of it."""
    costs = Costs(reference_s=10.0, md_s=2.5, training_s=2.0, other_s=0.5, grows=False)
    assert md_bound(costs, 8) and ml_ranks_needed(costs, 8, 1, 2) == 3
    outcome = simulate(costs, Setup(groups=8, trajectories=32, labels=400, ml_ranks=3))
    assert outcome.busy_fraction == pytest.approx(10.0 / (8 * 3.0), abs=0.01)
    assert outcome.ml_busy_fraction == pytest.approx((1 + 2 / 3) / 3, abs=0.01)


def test_members_on_their_own_ranks_train_a_label_in_parallel():
    """One trajectory, free reference, E = 2: on one rank a cycle is 1 s MD + 2 s training; with 2 ML ranks the
    members' 1 s shares run at once on ranks 0 and 1 (cycle 2 s; rank 0 busy 2 s, rank 1 1 s a cycle); with 3,
    rank 0 only runs MD and the cycle is still 2 s. E = 3 on 2 ranks: rank 1 trains members 0 and 2 (2 s), rank 0
    member 1 (1 s); the trajectory waits for both, cycle 1 + 2 s, each rank busy 2 s of it."""
    costs = Costs(reference_s=0.0, md_s=1.0, training_s=2.0, grows=False)
    alone = simulate(costs, Setup(groups=1, trajectories=1, labels=10))
    assert alone.wall_s == pytest.approx(30.0) and alone.ml_busy_fraction == pytest.approx(1.0)
    two = simulate(costs, Setup(groups=1, trajectories=1, labels=10, ml_ranks=2))
    assert two.wall_s == pytest.approx(20.0) and two.ml_busy_fraction == pytest.approx(30.0 / (2 * 20.0))
    three = simulate(costs, Setup(groups=1, trajectories=1, labels=10, ml_ranks=3))
    assert three.wall_s == pytest.approx(20.0) and three.ml_busy_fraction == pytest.approx(30.0 / (3 * 20.0))
    uneven = simulate(replace(costs, training_s=3.0),
                      Setup(groups=1, trajectories=1, labels=10, ml_ranks=2, ensemble_size=3))
    assert uneven.wall_s == pytest.approx(30.0) and uneven.ml_busy_fraction == pytest.approx(2.0 / 3.0)
    with pytest.raises(ValueError):
        simulate(costs, Setup(groups=1, trajectories=1, labels=10, ml_ranks=4))


def test_too_few_trajectories_leave_groups_idle():
    """2 trajectories cycling through 1 s MD + 10 s reference + 1 s training keep 2 of 4 groups busy 10 s of 13 s
    on one ML rank (each waits 1 s a cycle for the other's MD or training). With 2 ML ranks the members' 0.5 s
    shares run at once and the two trajectories' rank-0 work (0.5 s share + 1 s MD) settles end to end: 11.5 s."""
    costs = Costs(reference_s=10.0, md_s=1.0, training_s=1.0, grows=False)
    shared = simulate(costs, Setup(groups=4, trajectories=2, labels=200))
    assert shared.busy_fraction == pytest.approx(2 * 10.0 / (4 * 13.0), abs=0.01)
    outcome = simulate(costs, Setup(groups=4, trajectories=2, labels=200, ml_ranks=2))
    assert outcome.busy_fraction == pytest.approx(2 * 10.0 / (4 * 11.5), abs=0.01)


def test_training_that_grows_with_the_data_makes_the_ml_side_the_bottleneck():
    steady = Costs(reference_s=10.0, md_s=0.5, training_s=1.0, training_set=10, grows=False)
    growing = Costs(reference_s=10.0, md_s=0.5, training_s=1.0, training_set=10)
    setup = Setup(groups=4, trajectories=8, labels=400)
    assert simulate(steady, setup).busy_fraction > 0.95
    assert simulate(growing, setup).busy_fraction < 0.5  # training at 300 structures: 30 s per label
    # at 310 structures a member's share is 15.5 s: 4 x 15.5 > 10 s even with one member per rank, and not MD-bound
    assert rank_work_per_label_s(growing, 310, 2, 3) == [0.5, 15.5, 15.5]
    assert ml_ranks_needed(growing, 4, 310, 2) == 3 and not md_bound(growing, 4)


def test_ml_ranks_needed_follows_the_member_owners():
    """E = 4, MD 1 s, training 4 s (1 s a member), DFT 10 s. Member i on rank (i + 1) mod M gives the busiest rank
    5 s a label with M = 1, 3 s with M = 2 (rank 0: MD + 2 members), 2 s with M = 3 and 4, 1 s with M = 5."""
    costs = Costs(reference_s=10.0, md_s=1.0, training_s=4.0, grows=False)
    assert member_owners(4, 3) == [1, 2, 0, 1]
    assert [max(rank_work_per_label_s(costs, 1, 4, m)) for m in range(1, 6)] == [5.0, 3.0, 2.0, 2.0, 1.0]
    assert [ml_ranks_needed(costs, k, 1, 4) for k in (2, 3, 4, 5, 6, 10, 11)] == [1, 2, 3, 3, 5, 5, 5]
    assert not md_bound(costs, 10) and md_bound(costs, 11)  # K = 11: 11 x 1 s MD > 10 s, E + 1 ranks too few
