"""Everything the training engine needs from the settings, as one flat dataclass tests can build directly.

`TrainingConfig.from_settings(run_settings)` reads mace.general, mace.training, mace.architecture and mace.misc.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {"float64": torch.float64, "float32": torch.float32}
NO_SCHEDULER = "none"


@dataclass
class TrainingConfig:
    # mace.general
    name_exp: str = "model"
    seed: int = 42
    default_dtype: str = "float64"
    checkpoints_dir: str = "checkpoints"
    model_dir: str = "model"
    results_dir: str = "results"
    compute_stress: bool = False  # train on REF_stress (architectures with trains_stress)
    # mace.training (defaults are mace's)
    batch_size: int = 10
    valid_batch_size: int = 10
    lr: float = 0.01
    weight_decay: float = 5e-7
    amsgrad: bool = True
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9  # sgd
    scheduler: str = "ReduceLROnPlateau"  # plateau (ReduceLROnPlateau) | exponential (ExponentialLR) | onecycle | none
    min_lr: float = 0.0
    warmup_steps: int = 0  # onecycle
    onecycle_total_steps: int = 1000
    lr_factor: float = 0.8
    scheduler_patience: int = 50
    lr_scheduler_gamma: float = 0.9993
    ema: bool = True
    ema_decay: float = 0.99
    clip_grad: float | None = 10.0
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 1.0  # compute_stress: mace's stress loss weight
    virials_weight: float = 1.0  # compute_stress: mace's virials loss weight
    config_type_weights: dict[str, float] | None = None  # loss weight per atoms.info["config_type"]
    valid_skip: int = 1  # validate every valid_skip epochs (active_learning.valid_skip)
    force_alpha: float | None = None  # aenet: loss = (1 - alpha) E-term + alpha F-term (replaces the weights)
    criterion: str = "mse"  # mse | l1 | huber
    huber_delta: float = 0.01
    energy_loss: str = "per_atom"  # per_atom | total
    energy_target: str = "total"  # total | cohesive (minus ARCHITECTURE.atomic_energies)
    force_fraction: float = 1.0
    force_sampling: str = "random"  # random | fixed
    force_resample_num_epochs: int = 1
    force_min_structures_per_epoch: int = 1
    n_early_stopping: int | None = None
    checkpoint_interval: int | None = None
    max_checkpoints: int | None = None
    save_best: bool = False
    resume_from: str | None = None
    max_energy: float | None = None  # eV/atom, of (E - sum E0)/N
    max_forces: float | None = None  # eV/Å, largest atomic force
    write_predictions: bool = False
    training_plots: bool = True
    cache_featurization: bool = True
    cache_max_structures: int | None = None
    num_workers: int = 0
    # mace.misc
    device: str = "cpu"
    keep_checkpoints: bool = False
    restart_latest: bool = False
    # mace.architecture
    model: str = "MACE"
    atomic_energies: dict[int, float] | None = None
    hypers: Any = None  # the architecture's Hypers instance; None means its defaults
    hypers_statistics: dict[str, str] | None = None  # hyperparameter -> training-set statistic name
    energy_shift: Any = None  # engine per-element shift E0_t: number, {Z: eV} or a statistic reference
    energy_scale: Any = None  # engine per-element scale alpha_t
    energy_shift_trainable: bool = False
    energy_scale_trainable: bool = False
    zbl: bool = False
    zbl_cutoff: float = 1.0  # Å
    zbl_switch_width: float = 0.5  # Å
    foundation_model: str | None = None  # fine-tune from this MACE foundation (path or MACE-MP size)
    finetuning: str = "naive"  # naive | multihead
    freeze: int | None = None  # mace's --freeze
    replay_dataset: str | None = None  # multihead: extxyz of the foundation's own data
    export_lammps: bool = False  # mace.misc: also write model/{tag}.model-lammps.pt

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.default_dtype]

    @classmethod
    def from_settings(cls, run_settings: Any, **overrides: Any) -> "TrainingConfig":
        """Collect the engine's keys from a RunSettings (attribute access only, missing keys keep defaults)."""
        mace = getattr(run_settings, "mace", run_settings)
        sections = [getattr(mace, name, None) for name in ("general", "training", "misc", "architecture")]
        al = getattr(getattr(run_settings, "al", None), "active_learning", None)
        values: dict[str, Any] = {}
        for item in fields(cls):
            for section in sections + [al]:
                if section is not None and hasattr(section, item.name):
                    values[item.name] = getattr(section, item.name)
                    break
        general = sections[0]
        if "results_dir" not in values and getattr(general, "loss_dir", None):
            values["results_dir"] = general.loss_dir
        values.update(overrides)
        return cls(**values)

    def check_stress_training(self, architecture: Any) -> None:
        """compute_stress needs an architecture that trains stress and no engine energy terms (their stress is
        not computed); else InputError naming GENERAL.compute_stress and the model."""
        from ..errors import InputError
        from .head import HeadedArchitecture, base_architecture

        if not self.compute_stress:
            return
        if not getattr(base_architecture(architecture), "trains_stress", False):
            raise InputError(f"architecture {self.model} cannot train on stress (it has no strain hook); set it "
                             f"false or use MACE", where="GENERAL.compute_stress")
        if isinstance(architecture, HeadedArchitecture):
            raise InputError("training on stress with the engine's energy terms (ARCHITECTURE.energy_shift, "
                             "energy_scale, zbl) is not supported", where="GENERAL.compute_stress")

    def with_hypers(self) -> "TrainingConfig":
        """This config with `hypers` filled in with the architecture's defaults when missing."""
        if self.hypers is not None:
            return self
        from ..architectures.registry import get_architecture_class

        return replace(self, hypers=get_architecture_class(self.model).Hypers())

