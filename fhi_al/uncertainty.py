"""Ensemble force uncertainty and the active-learning threshold, as pure functions and one small state
object (`ThresholdTracker`) shared by all trajectories and saved in the restart record.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Hashable

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


def _key(key: Any) -> Hashable:
    return tuple(key) if isinstance(key, list) else key
