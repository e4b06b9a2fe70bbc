"""Alchemical SOAP-BPNN: atomic networks on compressed power spectra, E = sum_i E_i, forces = -dE/dR.

E_i = E0(Z_i) + shift + scale * sum_c w_c(Z_i) MLP_c(p_i), with w = the centre's pseudo-species weights
(contract_center_species) or a one-hot of its element; `AlchemicalArchitecture` plugs it into the engine.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms

from ...errors import InputError
from ..exported import AtomwiseModel, ExportedModelCalculator, GraphInputs, GraphSample, PositionsArchitecture
from ..base import Batch, DatasetStatistics
from .features import AlchemicalPowerSpectrum, NeighbourPairs, build_pairs
from .hypers import AlchemicalHypers

log = logging.getLogger(__name__)

MAX_ATOMIC_NUMBER = 118
EXPORT_FORMAT = "fhi_al.alchemical"


class MultiChannelMLP(torch.nn.Module):
    """`num_channels` independent SiLU networks evaluated together: [N, F] -> [N, num_channels]."""

    def __init__(self, *, num_channels: int, num_features: int, hidden_sizes: Sequence[int]):
        super().__init__()
        widths = [num_features] + [int(h) for h in hidden_sizes] + [1]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation
            self.weights.append(torch.nn.Parameter(torch.empty(num_channels, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(torch.nn.Parameter(torch.empty(num_channels, fan_out).uniform_(-bound, bound)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.einsum("nf,cfo->nco", features, self.weights[0]) + self.biases[0]
        for weight, bias in zip(self.weights[1:], self.biases[1:]):
            hidden = torch.einsum("nci,cio->nco", torch.nn.functional.silu(hidden), weight) + bias
        return hidden.squeeze(-1)


class AlchemicalModel(AtomwiseModel):
    """Compressed power spectrum + atomic networks; every statistics-derived number is a persistent buffer."""

    def __init__(self, *, hypers: AlchemicalHypers, species: Sequence[int]):
        super().__init__()
        species = sorted(int(z) for z in species)
        self.contract_center_species = bool(hypers.contract_center_species)
        self.features = AlchemicalPowerSpectrum(
            num_elements=len(species), num_pseudo_species=hypers.num_pseudo_species,
            cutoff_A=hypers.cutoff_radius, basis_cutoff=hypers.basis_cutoff,
            radial_basis_type=hypers.radial_basis_type, basis_scale_A=hypers.basis_scale,
            trainable_basis=hypers.trainable_basis, normalize=hypers.normalize)
        channels = hypers.num_pseudo_species if self.contract_center_species else len(species)
        self.networks = MultiChannelMLP(num_channels=channels, num_features=self.features.num_features,
                                        hidden_sizes=hypers.hidden_sizes)
        index = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        index[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("atomic_numbers", torch.tensor(species, dtype=torch.long))
        self.register_buffer("element_index_of_z", index)
        self.register_buffer("atomic_energies_eV", torch.zeros(len(species)))
        self.register_buffer("energy_shift_eV", torch.tensor(0.0))
        self.register_buffer("energy_scale_eV", torch.tensor(1.0))

    @property
    def species(self) -> list[int]:
        return [int(z) for z in self.atomic_numbers]

    def element_index(self, numbers: torch.Tensor) -> torch.Tensor:
        index = self.element_index_of_z[numbers]
        if bool((index < 0).any()):
            unknown = sorted({int(z) for z in numbers[index < 0]})
            raise InputError(f"elements {unknown} are not among the model's elements {self.species}; "
                             f"add structures containing them to the training set", where="alchemical model")
        return index

    def centre_weights(self, element_index: torch.Tensor) -> torch.Tensor:
        """[N, channels]: the centre's pseudo-species weights, or a one-hot of its element."""
        if self.contract_center_species:
            return self.features.pseudo_species_weights(element_index)
        return torch.nn.functional.one_hot(element_index, len(self.species)).to(self.energy_scale_eV.dtype)

    def atomic_energies(self, inputs: GraphInputs, positions_A: torch.Tensor) -> torch.Tensor:
        elements = self.element_index(inputs.numbers)
        features = self.features(positions_A, elements, inputs.graph)
        output = (self.networks(features) * self.centre_weights(elements)).sum(-1)
        return self.atomic_energies_eV[elements] + self.energy_shift_eV + self.energy_scale_eV * output


class AlchemicalArchitecture(PositionsArchitecture):
    export_format = EXPORT_FORMAT
    export_label = "alchemical"
    name = "alchemical"
    Hypers = AlchemicalHypers
    checkpoint_version = 1

    @property
    def cutoff_A(self) -> float:
        return float(self.hypers.cutoff_radius)

    def empty_model(self, species: Sequence[int]) -> AlchemicalModel:
        """A model of the right shape for `species` (weights random, statistics neutral): for loading states."""
        return AlchemicalModel(hypers=self.hypers, species=species).to(self.dtype)

    def build_model(self, stats: DatasetStatistics, *, seed: int) -> AlchemicalModel:
        model = self.seeded_model(stats.species, seed)
        if self.hypers.normalize:  # fixed at build time: trained weights depend on it
            model.features.density_scale.fill_(1.0 / math.sqrt(max(1.0, float(stats.num_neighbors_mean))))
        self.update_statistics(model, stats)
        return model

    def update_statistics(self, model: torch.nn.Module, stats: DatasetStatistics) -> None:
        """E0s, per-atom energy shift and force-RMS scale of the current training set; weights untouched."""
        self.set_energy_statistics(model, stats, shift_eV=stats.per_atom_energy_mean, scale_eV=float(stats.forces_rms))

    def featurize(self, atoms: Atoms) -> GraphSample:
        """The sample's graph is the structure's NeighbourPairs."""
        return self.graph_sample(atoms, build_pairs(atoms, cutoff_A=self.hypers.cutoff_radius, dtype=self.dtype))

    def collate(self, samples: Sequence[GraphSample]) -> Batch:
        atom_offsets = np.cumsum([0] + [len(s.numbers) for s in samples])
        return self.graph_batch(samples, NeighbourPairs.concatenate([s.graph for s in samples], atom_offsets))



def load_exported(path: str | Path) -> tuple[AlchemicalArchitecture, AlchemicalModel]:
    """(architecture, model) from a file written by `AlchemicalArchitecture.export`."""
    return AlchemicalArchitecture.load_exported(path)


class AlchemicalCalculator(ExportedModelCalculator):
    """ASE calculator of one exported alchemical model (energy in eV, forces in eV/Å)."""

    def __init__(self, model_path: str | Path, **kwargs: Any):
        super().__init__(model_path, loader=load_exported, **kwargs)
