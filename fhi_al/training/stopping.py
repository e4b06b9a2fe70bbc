"""Why a training session stopped, as a typed result with one wording for the log and the summaries, and the
best-weights snapshots that convergence keeps.

converged: `patience` validations in a row without a relative improvement larger than `margin`;
max epochs: the epoch limit ran out first (not convergence: the loss may still be falling);
early-stopped: `n_early_stopping` validations in a row without a new best loss during ordinary training.
"""

from __future__ import annotations

import copy
import enum
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


class StopReason(str, enum.Enum):
    CONVERGED = "converged"
    MAX_EPOCHS = "max_epochs"
    EARLY_STOPPED = "early_stopped"


@dataclass(frozen=True)
class TrainingStop:
    """How one member's training session ended; `describe()` is the text of the log and of the summaries."""

    tag: str
    reason: StopReason
    epochs: int  # epochs trained in this session
    final_epoch: int  # the member's epoch count at the stop
    best_loss: float  # best validation loss of the session (inf: no validation set)
    best_epoch: int | None  # member epoch of that best loss (the last improvement)
    stale_checks: int  # validations since the last improvement
    patience: int | None = None  # convergence: checks without improvement that count as converged
    margin: float | None = None  # convergence: relative improvement that counts
    limit: int | None = None  # the epoch limit (converge) or n_early_stopping (early stop)
    limit_key: str = "max_final_epochs"
    metrics: dict[str, float] | None = None  # validation metrics of the kept (best) weights

    @property
    def converged(self) -> bool:
        return self.reason is StopReason.CONVERGED

    def _best(self) -> str:
        if math.isinf(self.best_loss):
            return "no validation loss (empty validation set)"
        at = f" at epoch {self.best_epoch}" if self.best_epoch is not None else ""
        return f"best validation loss {self.best_loss:.4g}{at}"

    def describe(self) -> str:
        if self.reason is StopReason.CONVERGED:
            return (f"{self.tag} converged after {self.epochs} epochs: {self.stale_checks} validations without an "
                    f"improvement larger than {self.margin:.2%} (patience {self.patience}); {self._best()}")
        if self.reason is StopReason.MAX_EPOCHS:
            last = (f"last improvement at epoch {self.best_epoch}, {self.stale_checks} of {self.patience} "
                    f"validations without improvement since" if self.best_epoch is not None
                    else f"{self.stale_checks} of {self.patience} validations without improvement")
            return (f"{self.tag} stopped at {self.limit_key} = {self.limit} epochs, not converged ({last}); "
                    f"{self._best()}")
        return (f"{self.tag} early-stopped at epoch {self.final_epoch} after {self.stale_checks} validations without "
                f"a new best loss (n_early_stopping {self.limit}); {self._best()}")

    def as_record(self) -> dict[str, Any]:
        """JSON-ready fields for done markers and reports."""
        return {"tag": self.tag, "reason": self.reason.value, "epochs": self.epochs, "best_loss": self.best_loss,
                "best_epoch": self.best_epoch, "summary": self.describe()}


def snapshot(member: Any) -> dict[str, Any]:
    """Detached copies of the member's weights and EMA weights (the best state of a convergence)."""
    return {"model": _detached_copy(member.model.state_dict()),
            "ema": _detached_copy(member.ema.state_dict()) if member.ema is not None else None}


def restore(member: Any, state: dict[str, Any]) -> None:
    member.model.load_state_dict(state["model"])
    if member.ema is not None:
        member.ema.load_state_dict(state["ema"])
    member.version += 1


def _detached_copy(value: Any) -> Any:
    """A deep copy of a (nested) state dict whose tensors are detached clones."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _detached_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_copy(item) for item in value)
    return copy.deepcopy(value)
