"""Which labelled frame goes to training and which to validation, as pure functions of counts and an RNG.

Initial dataset: each member splits its own frames by `valid_ratio`; AL: one rule for the shared labels.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence, TypeVar

import numpy as np

log = logging.getLogger(__name__)

TRAIN = "train"
VALID = "valid"

T = TypeVar("T")


def n_valid_to_add(n_new: int, *, valid_ratio: float, n_train: int = 0, n_valid: int = 0) -> int:
    """How many of `n_new` frames go to validation so that the set holds `valid_ratio` of all frames.

    Rounds half up on the running total (so small rounds still reach the ratio over time), keeps at
    least one validation frame once there are two frames, and never leaves the training set empty.
    """
    if not 0.0 <= valid_ratio < 1.0:
        raise ValueError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    if n_new <= 0 or valid_ratio == 0.0:
        return 0
    total = n_train + n_valid + n_new
    target = math.floor(total * valid_ratio + 0.5)
    if total >= 2:
        target = max(target, 1)
    wanted = min(max(target - n_valid, 0), n_new)
    if n_train == 0 and wanted == n_new:
        wanted -= 1  # the training set must never be empty
    return int(wanted)


def split_train_valid(frames: Sequence[T], *, valid_ratio: float, rng: np.random.Generator,
                      n_train: int = 0, n_valid: int = 0) -> tuple[list[T], list[T]]:
    """(train, valid) of `frames`, chosen at random; `n_train`/`n_valid` are the member's current set sizes."""
    n_pick = n_valid_to_add(len(frames), valid_ratio=valid_ratio, n_train=n_train, n_valid=n_valid)
    chosen = set(rng.choice(len(frames), size=n_pick, replace=False).tolist()) if n_pick else set()
    train = [frame for index, frame in enumerate(frames) if index not in chosen]
    valid = [frame for index, frame in enumerate(frames) if index in chosen]
    return train, valid


def al_destination(*, n_train_al: int, n_valid_al: int, valid_ratio: float) -> str:
    """Where the next AL label goes: VALID while validation holds less than `valid_ratio` of the AL
    labels stored so far (the new one not counted, so the first AL label trains), else TRAIN."""
    if not 0.0 <= valid_ratio < 1.0:
        raise ValueError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    return VALID if n_valid_al < valid_ratio * (n_train_al + n_valid_al) else TRAIN
