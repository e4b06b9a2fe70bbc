"""NequIP-style equivariant network plugged into the engine: neighbour lists, batching, statistics, forces = -dE/dR.

Exported files hold hypers, species and the state dict (loadable with weights_only=True), read back with
`load_exported` or `NequipCalculator`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import mace  # noqa: F401  - mace must be imported before anything imports e3nn
import numpy as np
import torch
from ase import Atoms
from mace.tools.torch_tools import default_dtype

from ...errors import InputError
from ..exported import ExportedModelCalculator, PositionsArchitecture
from ..base import Batch, DatasetStatistics
from .hypers import NequipHypers
from .network import NequipInputs, NequipModel
from ...neighbours import neighbour_list

log = logging.getLogger(__name__)

MIN_ENERGY_SCALE_EV = 1.0e-6  # below this the training set carries no scale information: use 1 eV
MIN_AVG_NEIGHBORS = 1.0  # structures without neighbours must not blow up the message normalisation
EXPORT_FORMAT = "fhi_al.nequip"
SHIFT_KEY, SCALE_KEY = "ARCHITECTURE.per_type_energy_shift", "ARCHITECTURE.per_type_energy_scale"


@dataclass
class NequipSample:
    """One featurised structure; labels are zeros with has_* False when the structure is unlabelled."""

    positions_A: torch.Tensor  # [N, 3]
    numbers: torch.Tensor  # [N]
    receiver: torch.Tensor  # [E]
    sender: torch.Tensor  # [E]
    shift_A: torch.Tensor  # [E, 3]
    energy_eV: float
    forces_eV_per_A: torch.Tensor
    has_energy: bool
    has_forces: bool


def neighbour_graph(atoms: Atoms, *, cutoff_A: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(receiver, sender, shift_A) of every ordered pair within `cutoff_A`, periodic images included."""
    receiver, sender, shifts = neighbour_list("ijS", atoms, cutoff_A)
    return receiver, sender, shifts @ np.asarray(atoms.cell.array, dtype=float)


class NequipArchitecture(PositionsArchitecture):
    export_format = EXPORT_FORMAT
    export_label = "NequIP"
    name: ClassVar[str] = "NequIP"
    Hypers: ClassVar[type] = NequipHypers
    checkpoint_version: ClassVar[int] = 1

    # --- model -------------------------------------------------------------------------------------------
    def empty_model(self, species: Sequence[int]) -> NequipModel:
        """A model of the right shape for `species` (random weights, neutral statistics): for loading states."""
        with default_dtype(self.dtype):
            return NequipModel(hypers=self.hypers, species=species).to(self.dtype)

    def build_model(self, stats: DatasetStatistics, *, seed: int) -> NequipModel:
        model = self.seeded_model(stats.species, seed)
        self.update_statistics(model, stats)
        return model

    def update_statistics(self, model: torch.nn.Module, stats: DatasetStatistics) -> None:
        """avg_num_neighbors, per-type shifts and scales from hypers or `stats`; trained weights are untouched."""
        unknown = sorted(set(stats.species) - set(model.species))
        if unknown:
            raise InputError(f"training data contains element(s) {unknown} the model was not built for "
                             f"({model.species})", where="training set")
        h = self.hypers
        neighbours = h.avg_num_neighbors if h.avg_num_neighbors is not None else stats.num_neighbors_mean
        scale_default = stats.forces_rms
        if not np.isfinite(scale_default) or scale_default < MIN_ENERGY_SCALE_EV:
            log.info("NequIP: training set gives energy scale %r; using 1 eV", scale_default)
            scale_default = 1.0
        shifts = _per_type(h.per_type_energy_shift, model.species, stats.atomic_energies_eV, SHIFT_KEY)
        scales = _per_type(h.per_type_energy_scale, model.species, dict.fromkeys(model.species, scale_default),
                           SCALE_KEY)
        with torch.no_grad():
            model.avg_num_neighbors.fill_(max(MIN_AVG_NEIGHBORS, float(neighbours)))
            model.energy_shift_eV.copy_(torch.tensor(shifts, dtype=model.energy_shift_eV.dtype))
            model.energy_scale_eV.copy_(torch.tensor(scales, dtype=model.energy_scale_eV.dtype))

    # --- data --------------------------------------------------------------------------------------------
    def featurize(self, atoms: Atoms) -> NequipSample:
        receiver, sender, shift_A = neighbour_graph(atoms, cutoff_A=self.cutoff_A)
        return NequipSample(
            positions_A=torch.tensor(atoms.positions, dtype=self.dtype),
            numbers=torch.tensor(atoms.numbers, dtype=torch.long),
            receiver=torch.as_tensor(receiver, dtype=torch.long), sender=torch.as_tensor(sender, dtype=torch.long),
            shift_A=torch.as_tensor(shift_A, dtype=self.dtype), **self.sample_labels(atoms))

    def collate(self, samples: Sequence[NequipSample]) -> Batch:
        offsets = np.cumsum([0] + [len(s.numbers) for s in samples])
        num_atoms = torch.tensor([len(s.numbers) for s in samples], dtype=torch.long)
        structure_index = torch.repeat_interleave(torch.arange(len(samples)), num_atoms)
        inputs = NequipInputs(
            positions_A=torch.cat([s.positions_A for s in samples]), numbers=torch.cat([s.numbers for s in samples]),
            receiver=torch.cat([s.receiver + int(offsets[k]) for k, s in enumerate(samples)]),
            sender=torch.cat([s.sender + int(offsets[k]) for k, s in enumerate(samples)]),
            shift_A=torch.cat([s.shift_A for s in samples]), structure_index=structure_index,
            num_structures=len(samples))
        return self.labelled_batch(samples, inputs, num_atoms, structure_index)

    def node_features(self, model: NequipModel, atoms: Atoms) -> list[torch.Tensor]:
        """Node features of `atoms` after the embedding and each layer (irreps: `model.layer_irreps()`)."""
        inputs = self.collate([self.featurize(atoms)]).inputs
        with torch.no_grad():
            return model.node_features(inputs, inputs.positions_A)

    # --- files -------------------------------------------------------------------------------------------


def _per_type(setting: Any, species: Sequence[int], from_stats: dict[int, float], where: str) -> list[float]:
    """One value per element of `species`: the setting (number or per-element mapping) or the statistics."""
    if setting is None:
        values = from_stats
    elif isinstance(setting, dict):
        values = setting
    else:
        values = dict.fromkeys(species, float(setting))
    missing = [z for z in species if z not in values]
    if missing:
        raise InputError(f"no value for element(s) {missing}", where=where)
    return [float(values[z]) for z in species]


def load_exported(path: str | Path) -> tuple[NequipArchitecture, NequipModel]:
    """(architecture, model) from a file written by `NequipArchitecture.export`."""
    return NequipArchitecture.load_exported(path)


class NequipCalculator(ExportedModelCalculator):
    """ASE calculator of one exported NequIP model (energy in eV, forces in eV/Å)."""

    def __init__(self, model_path: str | Path, **kwargs: Any):
        super().__init__(model_path, loader=load_exported, **kwargs)
