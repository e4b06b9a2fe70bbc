"""Optimisers, learning-rate schedulers and the exponential moving average of the weights (torch_ema).

Built from TrainingConfig with mace's names and defaults; architectures may supply their parameter groups.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch_ema import ExponentialMovingAverage

from ..errors import SettingsError
from .config import NO_SCHEDULER, TrainingConfig

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
PLATEAU, EXPONENTIAL, ONECYCLE = "plateau", "exponential", "onecycle"
SCHEDULER_ALIASES = {"reducelronplateau": PLATEAU, "exponentiallr": EXPONENTIAL, PLATEAU: PLATEAU,
                     EXPONENTIAL: EXPONENTIAL, ONECYCLE: ONECYCLE, NO_SCHEDULER: NO_SCHEDULER}
SCHEDULERS = ("ReduceLROnPlateau", "ExponentialLR", PLATEAU, EXPONENTIAL, ONECYCLE, NO_SCHEDULER)


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
    if name == "sgd":
        return torch.optim.SGD(fresh, lr=config.lr, momentum=config.momentum)
    return OPTIMIZERS[name](fresh, lr=config.lr, amsgrad=config.amsgrad)


def scheduler_kind(config: TrainingConfig) -> str:
    """plateau | exponential | onecycle | none (mace's names ReduceLROnPlateau, ExponentialLR accepted)."""
    kind = SCHEDULER_ALIASES.get(str(config.scheduler or NO_SCHEDULER).lower())
    if kind is None:
        raise SettingsError(f"unknown scheduler {config.scheduler!r}; use one of {SCHEDULERS}",
                            where="TRAINING.scheduler")
    return kind


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    """plateau (stepped on the validation loss), exponential (per epoch), onecycle (per optimizer step) or None."""
    kind = scheduler_kind(config)
    if kind == PLATEAU:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.lr_factor,
                                                          patience=config.scheduler_patience, min_lr=config.min_lr)
    if kind == EXPONENTIAL:
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_scheduler_gamma)
    if kind == ONECYCLE:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: onecycle_factor(
            step, warmup_steps=config.warmup_steps, total_steps=config.onecycle_total_steps,
            min_factor=config.min_lr / config.lr))
    return None


def onecycle_factor(step: int, *, warmup_steps: int, total_steps: int, min_factor: float) -> float:
    """Learning rate / base rate at optimizer step `step`: linear warm-up to 1 over `warmup_steps`, then a
    cosine decay to `min_factor` at `total_steps`, constant afterwards."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_batch(scheduler: Any) -> bool:
    """True for schedulers stepped after every optimizer step (onecycle) rather than per epoch."""
    return isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)


def build_ema(model: torch.nn.Module, config: TrainingConfig) -> ExponentialMovingAverage | None:
    if not config.ema:
        return None
    return ExponentialMovingAverage(model.parameters(), decay=config.ema_decay)


def is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
