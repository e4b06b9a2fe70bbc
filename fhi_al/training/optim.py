"""Optimisers, learning-rate schedulers and the exponential moving average of the weights (torch_ema).

Built from TrainingConfig with mace's names and defaults; architectures may supply their parameter groups.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch_ema import ExponentialMovingAverage

from ..errors import SettingsError
from .config import NO_SCHEDULER, TrainingConfig

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = ("ReduceLROnPlateau", "ExponentialLR", NO_SCHEDULER)


def param_groups(architecture: Any, model: torch.nn.Module, config: TrainingConfig) -> list[dict[str, Any]]:
    """The architecture's groups (hook `param_groups(model, weight_decay=)`) or one group with decay."""
    hook = getattr(architecture, "param_groups", None)
    if hook is not None:
        return hook(model, weight_decay=config.weight_decay)
    return [{"name": "all", "params": list(model.parameters()), "weight_decay": config.weight_decay}]


def build_optimizer(groups: list[dict[str, Any]], config: TrainingConfig) -> torch.optim.Optimizer:
    """A fresh optimizer over `groups` at the base learning rate `config.lr`."""
    name = config.optimizer.lower()
    if name not in OPTIMIZERS:
        raise SettingsError(f"unknown optimizer {config.optimizer!r}; use one of {sorted(OPTIMIZERS)}",
                            where="TRAINING.optimizer")
    fresh = [{**group, "params": list(group["params"]), "lr": config.lr} for group in groups]
    return OPTIMIZERS[name](fresh, lr=config.lr, amsgrad=config.amsgrad)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    """ReduceLROnPlateau (stepped on the validation loss), ExponentialLR (stepped per epoch) or None."""
    name = config.scheduler or NO_SCHEDULER
    if name == "ReduceLROnPlateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.lr_factor,
                                                          patience=config.scheduler_patience)
    if name == "ExponentialLR":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_scheduler_gamma)
    if str(name).lower() == NO_SCHEDULER:
        return None
    raise SettingsError(f"unknown scheduler {name!r}; use one of {SCHEDULERS}", where="TRAINING.scheduler")


def build_ema(model: torch.nn.Module, config: TrainingConfig) -> ExponentialMovingAverage | None:
    if not config.ema:
        return None
    return ExponentialMovingAverage(model.parameters(), decay=config.ema_decay)


def is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
