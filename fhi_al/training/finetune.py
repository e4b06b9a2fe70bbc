"""The engine's side of foundation models and hand-over: members fine-tuned from ARCHITECTURE.foundation_model
(naive, or multihead with replay data on the foundation's head), and LAMMPS files of exported MACE models.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import SettingsError

log = logging.getLogger(__name__)

FOUNDATION_KEY = "ARCHITECTURE.foundation_model"
MULTIHEAD = "multihead"


def attach_foundation(architecture: Any, config: Any) -> None:
    """Let `architecture` (MACE only) start its members from `config.foundation_model`."""
    hook = getattr(architecture, "use_foundation", None)
    if hook is None:
        raise SettingsError(f"fine-tuning a foundation model needs a MACE architecture, got {architecture.name!r}",
                            where=FOUNDATION_KEY)
    if config.hypers_statistics:
        name = next(iter(config.hypers_statistics))
        raise SettingsError("the foundation model fixes the hyperparameters; a training-set statistic cannot set "
                            f"{name}", where=f"ARCHITECTURE.{name}")
    replay = config.replay_dataset if config.finetuning == MULTIHEAD else None
    if config.finetuning == MULTIHEAD and replay is None:
        raise SettingsError("multihead fine-tuning needs replay data (an extxyz file of labelled frames)",
                            where="ARCHITECTURE.replay_dataset")
    hook(config.foundation_model, freeze=config.freeze, replay_dataset=replay)


def replay_atoms(architecture: Any) -> list:
    """Frames trained on the foundation's head besides the member's data (multihead fine-tuning), else []."""
    from .head import base_architecture

    hook = getattr(base_architecture(architecture), "replay_atoms", None)
    return hook() if hook is not None else []


def export_lammps(architecture: Any, model_path: Path) -> Path:
    """`{model_path}-lammps.pt` through mace's converter (MISC.export_lammps); MACE architectures only."""
    from ..architectures.mace.model import MaceArchitecture
    from .head import HeadedArchitecture

    if isinstance(architecture, HeadedArchitecture):
        raise SettingsError("the engine's energy terms (ARCHITECTURE.energy_shift, energy_scale, zbl) are not part "
                            "of the mace model file, so a LAMMPS file would lack them; switch them off or "
                            "export_lammps", where="MISC.export_lammps")
    if not isinstance(architecture, MaceArchitecture):
        raise SettingsError(f"LAMMPS export is for MACE models, the architecture is {architecture.name!r}",
                            where="MISC.export_lammps")
    from ..architectures.mace.lammps import write_lammps_model

    return write_lammps_model(model_path)
