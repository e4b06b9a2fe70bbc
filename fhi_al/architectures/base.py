"""The contract every machine-learning architecture fulfils so that the one training loop can train it.

An architecture turns labelled ASE structures into cached per-structure samples (`featurize`), batches
them (`collate`), builds a torch model from typed hyperparameters plus statistics of the current
training set (`build_model`, refreshed by `update_statistics` before every training session), predicts
energies and forces = -dE/dR (`predict`) and exports a model file (`export`). The engine owns the loss,
optimiser, scheduler, EMA, checkpoints and metrics.

Units everywhere: energies in eV, forces in eV/Å, lengths in Å.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from ase import Atoms

# the label's keys: REF_energy (eV), REF_forces (eV/Å), REF_stress (Voigt 6, eV/Å³)
from ..labeling.label import REF_ENERGY_KEY, REF_FORCES_KEY, REF_STRESS_KEY  # noqa: F401


@dataclass
class DatasetStatistics:
    """Statistics of the current training set that models use as parameters (NequIP-style).

    Computed by `fhi_al.data.stats.compute_statistics`; names are the ones hyperparameters may refer to.
    """

    species: list[int]  # atomic numbers, sorted
    atomic_energies_eV: dict[int, float]  # E0 per element: given by the user or fitted by least squares
    atomic_energies_source: str  # "settings" | "least_squares"
    num_neighbors_mean: float
    per_atom_energy_mean: float  # of (E - sum E0) / N, eV/atom
    per_atom_energy_std: float
    forces_rms: float  # eV/Å
    per_type_forces_rms: dict[int, float] = field(default_factory=dict)
    num_structures: int = 0
    # E0 per element by least squares of the total energies, whatever atomic_energies_eV holds, eV
    per_type_energy_shifts: dict[int, float] = field(default_factory=dict)


@dataclass
class Batch:
    """A collated batch: architecture-specific inputs plus the common targets the engine's loss uses."""

    inputs: Any  # whatever the architecture's `predict` consumes
    energy_eV: torch.Tensor  # [num_structures]
    forces_eV_per_A: torch.Tensor  # [num_atoms, 3]
    num_atoms: torch.Tensor  # [num_structures]
    structure_index: torch.Tensor  # [num_atoms]: which structure each atom belongs to
    energy_weight: torch.Tensor | None = None  # [num_structures], default ones
    forces_weight: torch.Tensor | None = None  # [num_structures], default ones
    # architectures that train stress (Architecture.trains_stress): reference stress, 0/1 whether a structure has
    # one, cell volume
    stress_eV_per_A3: torch.Tensor | None = None  # [num_structures, 3, 3], ASE's sign
    stress_weight: torch.Tensor | None = None  # [num_structures]
    volume_A3: torch.Tensor | None = None  # [num_structures]

    def to(self, device: torch.device | str) -> "Batch":
        moved = {name: (value.to(device) if isinstance(value, torch.Tensor) else value)
                 for name, value in vars(self).items()}
        if hasattr(self.inputs, "to"):
            moved["inputs"] = self.inputs.to(device)
        return Batch(**moved)


class Architecture(abc.ABC):
    """One machine-learning architecture. Subclasses live in `fhi_al/architectures/<name>/`."""

    name: ClassVar[str]
    Hypers: ClassVar[type]  # a dataclass declared with fhi_al.settings.typed.option
    checkpoint_version: ClassVar[int] = 1
    # Keys of ARCHITECTURE that belong to the engine rather than to this architecture's Hypers.
    engine_keys: ClassVar[tuple[str, ...]] = ("model", "atomic_energies")
    # True when the architecture trains on stress (GENERAL.compute_stress): its batches carry the stress fields
    # and it has `predict_stress(model, batch, training=...)` -> {'energy', 'forces', 'stress' [S, 3, 3]}.
    # Keep in step with registry.STRESS_ARCHITECTURES (read when the settings are, without torch).
    trains_stress: ClassVar[bool] = False

    def __init__(self, hypers: Any, *, dtype: torch.dtype = torch.float64):
        self.hypers = hypers
        self.dtype = dtype

    @property
    def cutoff_A(self) -> float:
        """Radius of the neighbour graph in Å; statistics such as num_neighbors_mean use it."""
        return float(getattr(self.hypers, "r_max"))

    @abc.abstractmethod
    def build_model(self, stats: DatasetStatistics, *, seed: int) -> torch.nn.Module:
        """A freshly initialised model for the species and statistics given."""

    def update_statistics(self, model: torch.nn.Module, stats: DatasetStatistics) -> None:
        """Refresh statistics-derived buffers (E0s, avg_num_neighbors, scale/shift) without touching
        trained weights. Called before every training session because the data grows."""

    def initialize_from_samples(self, model: torch.nn.Module, samples: Sequence[Any]) -> None:
        """Fit data-dependent parts of a new model once (e.g. feature normalisation) from the training
        samples; saved with the model, so a resumed member keeps them. Default: nothing to fit."""

    @abc.abstractmethod
    def featurize(self, atoms: Atoms) -> Any:
        """A per-structure sample (cacheable, CPU tensors) with the reference labels if present."""

    @abc.abstractmethod
    def collate(self, samples: Sequence[Any]) -> Batch:
        """Stack samples into a Batch."""

    @abc.abstractmethod
    def predict(self, model: torch.nn.Module, batch: Batch, *, training: bool = False) -> dict[str, torch.Tensor]:
        """{'energy': [num_structures] eV, 'forces': [num_atoms, 3] eV/Å}; forces = -dE/dR.

        With training=True the graph is kept so a loss of the forces can be back-propagated."""

    @abc.abstractmethod
    def export(self, model: torch.nn.Module, path: Path) -> None:
        """Write a stand-alone model file (for MACE: loadable by mace.calculators.MACECalculator)."""

    def atomic_energies(self, model: torch.nn.Module, inputs: Any,
                        positions_A: torch.Tensor) -> torch.Tensor | None:
        """Optional engine hook: per-atom energies [num_atoms] (eV) of a collated batch's `inputs` as a
        differentiable function of `positions_A`; lets the engine apply per-element energy scales.
        Default: the model's own `atomic_energies(inputs, positions_A)` method if it has one, else None."""
        method = getattr(model, "atomic_energies", None)
        return method(inputs, positions_A) if callable(method) else None

    def positions(self, inputs: Any) -> torch.Tensor | None:
        """Optional engine hook: the atom positions [num_atoms, 3] of a collated batch's `inputs`."""
        found = getattr(inputs, "positions_A", None)
        return found if found is not None else getattr(inputs, "positions", None)

    def hypers_dict(self) -> Mapping[str, Any]:
        from dataclasses import asdict

        return asdict(self.hypers)


def reference_labels(atoms: Atoms) -> tuple[float, np.ndarray]:
    """(energy eV, forces eV/Å) stored on a labelled structure."""
    return float(atoms.info[REF_ENERGY_KEY]), np.asarray(atoms.arrays[REF_FORCES_KEY], dtype=float)
