"""Ensemble force uncertainty and the active-learning threshold, as pure functions and small state objects
(`ThresholdTracker`, shared by all trajectories; `SystemThresholds`, one tracker per system or one for all)
saved in the restart record.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_WARMUP_CHECKS = 10
DEFAULT_WINDOW = 400  # checks in the moving average (all trajectories together)
STATE_VERSION = 1
REDUCTIONS = ("max", "mean")

NONE = "none"
CROSSED = "crossed"
FORCED = "forced"
TOO_UNCERTAIN = "too_uncertain"


def per_atom_force_spread(forces_comm: np.ndarray) -> np.ndarray:
    """[M, N, 3] member forces -> [N]: sqrt(mean over members of |F_m - F_mean|^2), in eV/Å."""
    forces = np.asarray(forces_comm, dtype=float)
    if forces.ndim != 3 or forces.shape[2] != 3:
        raise ValueError(f"forces_comm must have shape [members, atoms, 3], got {forces.shape}")
    deviation = forces - forces.mean(axis=0, keepdims=True)
    return np.sqrt(np.mean(np.sum(deviation**2, axis=2), axis=0))


def reduce_uncertainty(per_atom: np.ndarray, how: str = "max") -> float:
    """One number per frame: the largest ('max') or the average ('mean') per-atom spread."""
    if how not in REDUCTIONS:
        raise ValueError(f"uncertainty reduction must be one of {REDUCTIONS}, got {how!r}")
    values = np.asarray(per_atom, dtype=float)
    return float(values.max() if how == "max" else values.mean())


def frame_uncertainty(forces_comm: np.ndarray, how: str = "max") -> float:
    return reduce_uncertainty(per_atom_force_spread(forces_comm), how)


@dataclass(frozen=True)
class Decision:
    """What to do with one checked frame. `label`: send to the reference; `discard`: reset the trajectory."""

    kind: str
    value: float
    threshold: float | None

    @property
    def label(self) -> bool:
        return self.kind in (CROSSED, FORCED)

    @property
    def discard(self) -> bool:
        return self.kind == TOO_UNCERTAIN


class ThresholdTracker:
    """Threshold = moving average of the last `window` uncertainties x (1 + c_x), after `warmup_checks`.

    - A value above `upper_bound` (eV/Å, optional) or not finite is TOO_UNCERTAIN: unphysical, not
      averaged in, not counted as a check.
    - A value above the threshold is CROSSED. During warm-up the threshold is None and nothing crosses.
    - A trajectory with `not_crossed_limit` consecutive post-warm-up checks without a crossing gets its
      next frame FORCED to the reference (counted per trajectory).
    - The threshold of a check is the one from the values before it; the value then joins the average.
    Negative `c_x` lowers the threshold (more labels), positive raises it.
    """

    def __init__(self, c_x: float, *, warmup_checks: int = DEFAULT_WARMUP_CHECKS, window: int = DEFAULT_WINDOW,
                 not_crossed_limit: int | None = None, upper_bound: float | None = None):
        if warmup_checks < 1 or window < 1:
            raise ValueError("warmup_checks and window must be at least 1")
        if c_x <= -1.0:
            raise ValueError(f"c_x must be > -1 (threshold = mean x (1 + c_x)), got {c_x}")
        self.c_x = float(c_x)
        self.warmup_checks = int(warmup_checks)
        self.window = int(window)
        self.not_crossed_limit = not_crossed_limit
        self.upper_bound = upper_bound
        self.history: deque[float] = deque(maxlen=self.window)
        self.n_checks = 0
        self.not_crossed: dict[Hashable, int] = {}

    @property
    def threshold(self) -> float | None:
        if self.n_checks < self.warmup_checks or not self.history:
            return None
        return float(np.mean(self.history)) * (1.0 + self.c_x)

    def check(self, value: float, trajectory: Hashable = 0) -> Decision:
        value = float(value)
        threshold = self.threshold
        if not math.isfinite(value) or (self.upper_bound is not None and value > self.upper_bound):
            return Decision(TOO_UNCERTAIN, value, threshold)
        self.history.append(value)
        self.n_checks += 1
        if threshold is None:
            return Decision(NONE, value, None)
        if value > threshold:
            self.not_crossed[trajectory] = 0
            return Decision(CROSSED, value, threshold)
        count = self.not_crossed.get(trajectory, 0) + 1
        if self.not_crossed_limit is not None and count >= self.not_crossed_limit:
            self.not_crossed[trajectory] = 0
            log.info("trajectory %s: no crossing in %d checks; sending the frame to the reference anyway",
                     trajectory, count)
            return Decision(FORCED, value, threshold)
        self.not_crossed[trajectory] = count
        return Decision(NONE, value, threshold)

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "c_x": self.c_x, "warmup_checks": self.warmup_checks,
                "window": self.window, "not_crossed_limit": self.not_crossed_limit,
                "upper_bound": self.upper_bound, "history": list(self.history), "n_checks": self.n_checks,
                "not_crossed": [[key, count] for key, count in self.not_crossed.items()]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ThresholdTracker:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"threshold state version {state.get('version')!r}, expected {STATE_VERSION}")
        tracker = cls(state["c_x"], warmup_checks=state["warmup_checks"], window=state["window"],
                      not_crossed_limit=state["not_crossed_limit"], upper_bound=state["upper_bound"])
        tracker.history.extend(float(value) for value in state["history"])
        tracker.n_checks = int(state["n_checks"])
        tracker.not_crossed = {_key(key): int(count) for key, count in state["not_crossed"]}
        return tracker


class AbsoluteThreshold:
    """A fixed threshold on the calibrated uncertainty (eV/Å, an expected force error): above `threshold` a frame
    is CROSSED, above `upper_bound` (or not finite) TOO_UNCERTAIN, as in DP-GEN's trust levels. The per-trajectory
    `not_crossed_limit` forcing works as in ThresholdTracker. No warm-up: the calibration makes the value
    meaningful from the first check."""

    kind = "absolute"

    def __init__(self, threshold: float, *, upper_bound: float | None = None, not_crossed_limit: int | None = None):
        if threshold <= 0.0 or (upper_bound is not None and upper_bound <= threshold):
            raise ValueError(f"need 0 < threshold < upper bound, got {threshold} and {upper_bound}")
        self.fixed = float(threshold)
        self.upper_bound = upper_bound
        self.not_crossed_limit = not_crossed_limit
        self.n_checks = 0
        self.not_crossed: dict[Hashable, int] = {}

    @property
    def threshold(self) -> float:
        return self.fixed

    def check(self, value: float, trajectory: Hashable = 0) -> Decision:
        value = float(value)
        if not math.isfinite(value) or (self.upper_bound is not None and value > self.upper_bound):
            return Decision(TOO_UNCERTAIN, value, self.fixed)
        self.n_checks += 1
        if value > self.fixed:
            self.not_crossed[trajectory] = 0
            return Decision(CROSSED, value, self.fixed)
        count = self.not_crossed.get(trajectory, 0) + 1
        if self.not_crossed_limit is not None and count >= self.not_crossed_limit:
            self.not_crossed[trajectory] = 0
            return Decision(FORCED, value, self.fixed)
        self.not_crossed[trajectory] = count
        return Decision(NONE, value, self.fixed)

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "kind": self.kind, "threshold": self.fixed, "upper_bound": self.upper_bound,
                "not_crossed_limit": self.not_crossed_limit, "n_checks": self.n_checks,
                "not_crossed": [[key, count] for key, count in self.not_crossed.items()]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> AbsoluteThreshold:
        if state.get("version") != STATE_VERSION or state.get("kind") != cls.kind:
            raise ValueError(f"not an absolute threshold's state: {state.get('kind')!r}")
        tracker = cls(state["threshold"], upper_bound=state["upper_bound"],
                      not_crossed_limit=state["not_crossed_limit"])
        tracker.n_checks = int(state["n_checks"])
        tracker.not_crossed = {_key(key): int(count) for key, count in state["not_crossed"]}
        return tracker


def tracker_from_state(state: dict[str, Any]) -> ThresholdTracker | AbsoluteThreshold:
    """The saved tracker of either kind (records without a kind are moving averages)."""
    if state.get("kind") == AbsoluteThreshold.kind:
        return AbsoluteThreshold.from_state_dict(state)
    return ThresholdTracker.from_state_dict(state)


def _key(key: Any) -> Hashable:
    return tuple(key) if isinstance(key, list) else key


SHARED = "shared"  # the key of the one tracker when systems share their threshold
THRESHOLDS_VERSION = 1


class SystemThresholds:
    """The thresholds of a run of several systems: one ThresholdTracker per system (`per_system`), or one
    shared by all. A molecule and a bulk crystal have uncertainties of different size (the max over more
    atoms is larger), so a shared moving average would send mostly one system's frames to the reference.
    Trackers are created on a system's first check, from `make_tracker()`."""

    def __init__(self, make_tracker: Callable[[], ThresholdTracker | AbsoluteThreshold], *, per_system: bool):
        self.make_tracker = make_tracker
        self.per_system = bool(per_system)
        self.trackers: dict[str, ThresholdTracker] = {}

    def tracker(self, system: str) -> ThresholdTracker | AbsoluteThreshold:
        key = str(system) if self.per_system else SHARED
        if key not in self.trackers:
            self.trackers[key] = self.make_tracker()
        return self.trackers[key]

    def check(self, value: float, *, trajectory: Hashable, system: str) -> Decision:
        return self.tracker(system).check(value, trajectory)

    def state_dict(self) -> dict[str, Any]:
        return {"version": THRESHOLDS_VERSION, "per_system": self.per_system,
                "trackers": {key: tracker.state_dict() for key, tracker in self.trackers.items()}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], make_tracker: Callable[[], ThresholdTracker | AbsoluteThreshold], *, per_system: bool,
                        only_system: str | None = None) -> SystemThresholds:
        """The saved thresholds; a record of one ThresholdTracker (written before several systems existed)
        becomes the tracker of `only_system` (or the shared one). A record whose `per_system` differs from
        the setting is refused (ValueError): the moving averages cannot be split or merged afterwards."""
        thresholds = cls(make_tracker, per_system=per_system)
        if "trackers" not in state:  # a single ThresholdTracker's state
            key = only_system if per_system and only_system is not None else SHARED
            thresholds.trackers[key] = tracker_from_state(state)
            return thresholds
        if state.get("version") != THRESHOLDS_VERSION:
            raise ValueError(f"thresholds state version {state.get('version')!r}, expected {THRESHOLDS_VERSION}")
        if bool(state["per_system"]) != thresholds.per_system:
            kept = "one threshold per system" if state["per_system"] else "one shared threshold"
            raise ValueError(f"the restart record keeps {kept} but the settings ask for the other")
        thresholds.trackers = {key: tracker_from_state(saved) for key, saved in state["trackers"].items()}
        return thresholds
