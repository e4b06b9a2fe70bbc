"""Uncertainty: per-atom ensemble force spread and the threshold logic (warm-up, moving average, c_x,
forced calls, upper bound, restart)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fhi_al import restart, uncertainty as unc


def test_spread_known_values():
    forces = np.zeros((2, 2, 3))
    forces[0, 0] = [1.0, 0.0, 0.0]
    forces[1, 0] = [-1.0, 0.0, 0.0]
    forces[1, 1] = [0.0, 3.0, 4.0]  # member 0 has zero force on atom 1: deviations of length 2.5
    np.testing.assert_allclose(unc.per_atom_force_spread(forces), [1.0, 2.5])
    assert unc.frame_uncertainty(forces, "max") == pytest.approx(2.5)
    assert unc.frame_uncertainty(forces, "mean") == pytest.approx(1.75)


def test_spread_of_identical_members_is_zero(rng):
    member = rng.normal(size=(7, 3))
    np.testing.assert_array_equal(unc.per_atom_force_spread(np.stack([member] * 4)), np.zeros(7))
    np.testing.assert_array_equal(unc.per_atom_force_spread(member[None]), np.zeros(7))


def test_spread_matches_componentwise_std_and_is_invariant(rng):
    forces = rng.normal(size=(5, 6, 3))
    spread = unc.per_atom_force_spread(forces)
    np.testing.assert_allclose(spread, np.sqrt(np.sum(np.std(forces, axis=0) ** 2, axis=1)))
    rotated = forces @ Rotation.random(random_state=1).as_matrix().T
    np.testing.assert_allclose(unc.per_atom_force_spread(rotated), spread)
    np.testing.assert_allclose(unc.per_atom_force_spread(forces + rng.normal(size=(6, 3))), spread)  # common shift


def test_bad_shapes_and_reductions():
    with pytest.raises(ValueError):
        unc.per_atom_force_spread(np.zeros((3, 3)))
    with pytest.raises(ValueError):
        unc.reduce_uncertainty(np.ones(3), "median")


def warmed(tracker, value=1.0, trajectory=0):
    decisions = [tracker.check(value, trajectory) for _ in range(tracker.warmup_checks)]
    return decisions


def test_warmup_then_threshold():
    tracker = unc.ThresholdTracker(0.2, warmup_checks=10)
    decisions = warmed(tracker)
    decisions.append(tracker.check(50.0))  # no threshold before the 11th check: huge values do not cross
    assert [d.kind for d in decisions[:10]] == [unc.NONE] * 10
    assert all(d.threshold is None for d in decisions[:10])
    tracker = unc.ThresholdTracker(0.2, warmup_checks=10)
    warmed(tracker)
    assert tracker.threshold == pytest.approx(1.2)
    assert tracker.check(1.1).kind == unc.NONE
    crossed = tracker.check(1.3)
    assert crossed.kind == unc.CROSSED and crossed.label
    assert crossed.threshold == pytest.approx((10 * 1.0 + 1.1) / 11 * 1.2)  # 1.1 joined the average


def test_warmup_during_calls_is_none():
    tracker = unc.ThresholdTracker(0.0, warmup_checks=3)
    assert [tracker.check(v).kind for v in (5.0, 0.1, 9.0)] == [unc.NONE] * 3
    assert tracker.threshold == pytest.approx(np.mean([5.0, 0.1, 9.0]))


def test_c_x_sign():
    lower = unc.ThresholdTracker(-0.2, warmup_checks=4)
    higher = unc.ThresholdTracker(0.5, warmup_checks=4)
    warmed(lower)
    warmed(higher)
    assert lower.threshold == pytest.approx(0.8) and higher.threshold == pytest.approx(1.5)
    assert lower.check(0.9).kind == unc.CROSSED  # below the average, still crosses with c_x < 0
    assert higher.check(1.4).kind == unc.NONE
    with pytest.raises(ValueError):
        unc.ThresholdTracker(-1.0)


def test_moving_average_window():
    tracker = unc.ThresholdTracker(0.1, warmup_checks=3, window=4)
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for value in values:
        tracker.check(value)
    assert tracker.threshold == pytest.approx(np.mean(values[-4:]) * 1.1)
    decision = tracker.check(5.0)  # compared with the threshold before it joins the average
    assert decision.threshold == pytest.approx(4.5 * 1.1) and decision.kind == unc.CROSSED
    assert tracker.threshold == pytest.approx(np.mean([4.0, 5.0, 6.0, 5.0]) * 1.1)


def test_forced_call_per_trajectory():
    tracker = unc.ThresholdTracker(0.0, warmup_checks=2, not_crossed_limit=3)
    warmed(tracker, 1.0)
    kinds0 = [tracker.check(0.5, trajectory=0).kind for _ in range(2)]
    kinds1 = [tracker.check(0.5, trajectory=1).kind for _ in range(2)]
    assert kinds0 == kinds1 == [unc.NONE, unc.NONE]
    forced = tracker.check(0.5, trajectory=0)
    assert forced.kind == unc.FORCED and forced.label
    assert tracker.check(0.5, trajectory=0).kind == unc.NONE  # counter restarted after the forced call
    assert tracker.check(5.0, trajectory=1).kind == unc.CROSSED  # a crossing resets trajectory 1 too
    assert [tracker.check(0.1, trajectory=1).kind for _ in range(3)] == [unc.NONE, unc.NONE, unc.FORCED]


def test_no_forced_calls_without_limit():
    tracker = unc.ThresholdTracker(0.0, warmup_checks=2)
    warmed(tracker, 1.0)
    assert {tracker.check(0.1).kind for _ in range(100)} == {unc.NONE}


def test_upper_bound_discards_and_keeps_average():
    tracker = unc.ThresholdTracker(0.0, warmup_checks=2, upper_bound=3.0)
    warmed(tracker, 1.0)
    before = tracker.threshold, tracker.n_checks
    decision = tracker.check(3.5)
    assert decision.kind == unc.TOO_UNCERTAIN and decision.discard and not decision.label
    assert (tracker.threshold, tracker.n_checks) == before
    assert tracker.check(float("nan")).kind == unc.TOO_UNCERTAIN
    assert tracker.check(2.9).kind == unc.CROSSED
    # a frame above the bound is discarded even during warm-up, and NaN without any bound
    assert unc.ThresholdTracker(0.0, upper_bound=3.0).check(4.0).discard
    assert unc.ThresholdTracker(0.0).check(float("inf")).discard


def test_state_round_trip_continues_identically(tmp_path, rng):
    tracker = unc.ThresholdTracker(0.15, warmup_checks=5, window=20, not_crossed_limit=4, upper_bound=9.0)
    for value in rng.gamma(2.0, 0.5, size=30):
        tracker.check(value, trajectory=int(rng.integers(3)))
    restart.save_record(tmp_path / "al.json", {"threshold": tracker.state_dict()})
    resumed = unc.ThresholdTracker.from_state_dict(restart.load_record(tmp_path / "al.json")["threshold"])
    assert resumed.threshold == tracker.threshold and resumed.not_crossed == tracker.not_crossed
    future = [(float(v), int(t)) for v, t in zip(rng.gamma(2.0, 0.5, size=40), rng.integers(3, size=40))]
    assert [resumed.check(v, t) for v, t in future] == [tracker.check(v, t) for v, t in future]
    with pytest.raises(ValueError):
        unc.ThresholdTracker.from_state_dict({**tracker.state_dict(), "version": 99})


def test_absolute_threshold_labels_above_and_discards_beyond_the_upper_level():
    from fhi_al.uncertainty import AbsoluteThreshold, SystemThresholds, tracker_from_state

    tracker = AbsoluteThreshold(0.05, upper_bound=0.5, not_crossed_limit=3)
    assert tracker.check(0.06).kind == "crossed"  # no warm-up: calibrated values mean eV/Å from the start
    assert tracker.check(0.04).kind == "none" and tracker.check(0.05).kind == "none"
    assert tracker.check(0.01).kind == "forced"  # the third check in a row without a crossing
    assert tracker.check(0.6).discard and tracker.check(float("nan")).discard
    assert tracker.check(0.2, trajectory=1).threshold == 0.05
    restored = tracker_from_state(tracker.state_dict())
    assert isinstance(restored, AbsoluteThreshold) and restored.state_dict() == tracker.state_dict()
    thresholds = SystemThresholds(lambda: AbsoluteThreshold(0.1), per_system=True)
    thresholds.check(0.2, trajectory=0, system="water")
    again = SystemThresholds.from_state_dict(thresholds.state_dict(), lambda: AbsoluteThreshold(0.1), per_system=True)
    assert isinstance(again.tracker("water"), AbsoluteThreshold) and again.tracker("water").n_checks == 1
    with pytest.raises(ValueError):
        AbsoluteThreshold(0.1, upper_bound=0.05)
