"""The labelling thresholds of active learning, from the settings: a moving average × (1 + c_x) (the original
rule) or an absolute level on the calibrated uncertainty, one per system or one shared, restored from the restart
record; a record whose kind of threshold differs from the settings is refused with the key to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..settings.schema import ActiveLearningSettings
from ..systems import System
from ..uncertainty import DEFAULT_WINDOW, AbsoluteThreshold, SystemThresholds, ThresholdTracker


def make_tracker(al: ActiveLearningSettings) -> ThresholdTracker | AbsoluteThreshold:
    """A new threshold of the kind `threshold_mode` asks for."""
    if al.threshold_mode == "absolute":
        return AbsoluteThreshold(al.threshold_eV_per_A, not_crossed_limit=al.uncert_not_crossed_limit,
                                 upper_bound=al.upper_threshold_eV_per_A)
    return ThresholdTracker(al.c_x, warmup_checks=max(al.threshold_warmup_checks, 1),
                            window=al.threshold_window or DEFAULT_WINDOW, not_crossed_limit=al.uncert_not_crossed_limit,
                            upper_bound=al.uncertainty_upper_bound)


def make_thresholds(al: ActiveLearningSettings, systems: Sequence[System], saved: dict | None, *,
                    record: Path) -> SystemThresholds:
    """One tracker per system (threshold_per_system, several systems) or one for all; the saved ones."""
    per_system = al.threshold_per_system and len(systems) > 1
    factory = lambda: make_tracker(al)  # noqa: E731 - the thresholds call it once per system
    if saved is None:
        return SystemThresholds(factory, per_system=per_system)
    try:
        thresholds = SystemThresholds.from_state_dict(saved, factory, per_system=per_system,
                                                      only_system=systems[0].name)
    except ValueError as error:
        raise InputError(f"{error}; set it back or delete {record} to restart active learning",
                         where="ACTIVE_LEARNING.threshold_per_system") from None
    wanted = type(factory())
    if any(type(tracker) is not wanted for tracker in thresholds.trackers.values()):
        raise InputError(f"the restart record holds a threshold of the other mode; set threshold_mode back or delete "
                         f"{record} to restart active learning", where="ACTIVE_LEARNING.threshold_mode")
    return thresholds
