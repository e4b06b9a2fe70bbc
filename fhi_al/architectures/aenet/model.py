"""aenet-style Behler-Parrinello network: one small MLP per element on Chebyshev descriptors, forces = -dE/dR.

E = sum_i [E0(Z_i) + shift + scale * MLP_Z_i((G_i - mean_Z_i) / std_Z_i)]; `AenetArchitecture` plugs it into the engine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms

from ...errors import InputError
from ..exported import AtomwiseModel, ExportedModelCalculator, GraphInputs, GraphSample, PositionsArchitecture
from ..base import Batch, DatasetStatistics
from .descriptors import ChebyshevDescriptor, NeighbourGraph, build_graph
from .hypers import AenetHypers

log = logging.getLogger(__name__)

MAX_ATOMIC_NUMBER = 118
EXPORT_FORMAT = "fhi_al.aenet"
FEATURE_STD_FLOOR = 1.0e-3  # features that (almost) never vary are left unscaled rather than blown up
MTANH_GAIN, MTANH_SLOPE = 1.7159, 2.0 / 3.0  # LeCun's scaled tanh, aenet's "mtanh"


class ScaledTanh(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MTANH_GAIN * torch.tanh(MTANH_SLOPE * x)


_ACTIVATIONS = {"tanh": torch.nn.Tanh, "mtanh": ScaledTanh, "sigmoid": torch.nn.Sigmoid, "silu": torch.nn.SiLU}


def _mlp(num_features: int, hidden_sizes: Sequence[int], activation: str) -> torch.nn.Sequential:
    layers, width = [], num_features
    for hidden in hidden_sizes:
        layers += [torch.nn.Linear(width, int(hidden)), _ACTIVATIONS[activation]()]
        width = int(hidden)
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


class AenetModel(AtomwiseModel):
    """Descriptor + per-element MLPs; every statistics-derived number is a persistent buffer."""

    def __init__(self, *, hypers: AenetHypers, species: Sequence[int]):
        super().__init__()
        species = sorted(int(z) for z in species)
        self.descriptor = ChebyshevDescriptor(
            rad_order=hypers.rad_order, rad_cutoff_A=hypers.rad_cutoff, ang_order=hypers.ang_order,
            ang_cutoff_A=hypers.ang_cutoff, min_cutoff_A=hypers.min_cutoff, num_species=len(species),
            species_weighted=hypers.species_weighted)
        num_features = self.descriptor.num_features
        self.mlps = torch.nn.ModuleList(_mlp(num_features, hypers.hidden_sizes, hypers.activation) for _ in species)
        index = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        index[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("atomic_numbers", torch.tensor(species, dtype=torch.long))
        self.register_buffer("species_index_of_z", index)
        self.register_buffer("feature_mean", torch.zeros(len(species), num_features))
        self.register_buffer("feature_std", torch.ones(len(species), num_features))
        self.register_buffer("feature_stats_fitted", torch.tensor(False))
        self.register_buffer("atomic_energies_eV", torch.zeros(len(species)))
        self.register_buffer("energy_shift_eV", torch.tensor(0.0))
        self.register_buffer("energy_scale_eV", torch.tensor(1.0))

    @property
    def species(self) -> list[int]:
        return [int(z) for z in self.atomic_numbers]

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        index = self.species_index_of_z[numbers]
        if bool((index < 0).any()):
            unknown = sorted({int(z) for z in numbers[index < 0]})
            raise InputError(f"elements {unknown} are not among the model's elements {self.species}; "
                             f"add structures containing them to the training set", where="aenet model")
        return index

    def features(self, positions_A: torch.Tensor, species: torch.Tensor, graph: NeighbourGraph) -> torch.Tensor:
        raw = self.descriptor(positions_A, species, graph)
        return (raw - self.feature_mean[species]) / self.feature_std[species]

    def atomic_energies(self, inputs: GraphInputs, positions_A: torch.Tensor) -> torch.Tensor:
        species = self.species_index(inputs.numbers)
        features = self.features(positions_A, species, inputs.graph)
        output = features.new_zeros(features.shape[0])
        for index, mlp in enumerate(self.mlps):
            atoms = torch.nonzero(species == index).squeeze(-1)
            if atoms.numel():
                output = output.index_copy(0, atoms, mlp(features[atoms]).squeeze(-1))
        return self.atomic_energies_eV[species] + self.energy_shift_eV + self.energy_scale_eV * output


class AenetArchitecture(PositionsArchitecture):
    export_format = EXPORT_FORMAT
    export_label = "aenet"
    name = "aenet"
    Hypers = AenetHypers
    checkpoint_version = 1

    @property
    def cutoff_A(self) -> float:
        return float(self.hypers.max_cutoff_A)

    def empty_model(self, species: Sequence[int]) -> AenetModel:
        """A model of the right shape for `species` (weights random, statistics neutral): for loading states."""
        return AenetModel(hypers=self.hypers, species=species).to(self.dtype)

    def build_model(self, stats: DatasetStatistics, *, seed: int) -> AenetModel:
        model = self.seeded_model(stats.species, seed)
        self._set_neighbour_count_scaling(model, stats)
        self.update_statistics(model, stats)
        return model

    def update_statistics(self, model: torch.nn.Module, stats: DatasetStatistics) -> None:
        """E0s, energy shift and scale from the current training set; trained weights stay untouched."""
        shift, scale = 0.0, 1.0
        if self.hypers.normalize_energy:
            shift = float(stats.per_atom_energy_mean)
            scale = {"rms_forces_scaling": stats.forces_rms, "std_scaling": stats.per_atom_energy_std,
                     "no_scaling": 1.0}[self.hypers.energy_scaling]
        self.set_energy_statistics(model, stats, shift_eV=shift, scale_eV=float(scale))

    def _set_neighbour_count_scaling(self, model: AenetModel, stats: DatasetStatistics) -> None:
        """Before any data is seen: scale descriptors by the neighbour (pair) counts they sum over."""
        if not self.hypers.normalize_features:
            return
        neighbours = max(1.0, float(stats.num_neighbors_mean))
        descriptor = model.descriptor
        per_block = [neighbours] * descriptor.num_radial + [max(1.0, neighbours ** 2 / 2)] * descriptor.num_angular
        scale = torch.tensor(per_block * (2 if descriptor.weighted else 1), dtype=model.feature_std.dtype)
        model.feature_std.copy_(scale.expand_as(model.feature_std))

    def fit_feature_statistics(self, model: AenetModel, samples: Sequence[GraphSample], *,
                               refit: bool = False) -> bool:
        """Per-element mean/std of the descriptors over `samples` (aenet normalises once, on the first
        training set; later calls are no-ops unless `refit`, so trained weights keep their meaning)."""
        if not self.hypers.normalize_features or (bool(model.feature_stats_fitted) and not refit) or not samples:
            return False
        with torch.no_grad():
            batch = self.collate(samples)
            species = model.species_index(batch.inputs.numbers)
            raw = model.descriptor(batch.inputs.positions_A, species, batch.inputs.graph)
            for index in range(len(model.species)):
                rows = raw[species == index]
                if rows.shape[0] == 0:
                    continue
                model.feature_mean[index] = rows.mean(0)
                std = rows.std(0, unbiased=False) if rows.shape[0] > 1 else torch.ones_like(rows[0])
                model.feature_std[index] = torch.where(std < FEATURE_STD_FLOOR, torch.ones_like(std), std)
            model.feature_stats_fitted.fill_(True)
        log.info("aenet: descriptor normalisation fitted on %d structures", len(samples))
        return True

    def initialize_from_samples(self, model: AenetModel, samples: Sequence[GraphSample]) -> None:
        """Hook for the engine right after `build_model` with the first training set's samples."""
        self.fit_feature_statistics(model, samples)

    def featurize(self, atoms: Atoms) -> GraphSample:
        return self.graph_sample(atoms, build_graph(atoms, rad_cutoff_A=self.hypers.rad_cutoff,
                                                    ang_cutoff_A=self.hypers.ang_cutoff, dtype=self.dtype))

    def collate(self, samples: Sequence[GraphSample]) -> Batch:
        atom_offsets = np.cumsum([0] + [len(s.numbers) for s in samples])
        pair_offsets = np.cumsum([0] + [len(s.graph.pair_i) for s in samples])
        graph = NeighbourGraph(**{
            name: torch.cat([getattr(s.graph, name) + int(offsets[k]) for k, s in enumerate(samples)])
            for name, offsets in (("pair_i", atom_offsets), ("pair_j", atom_offsets),
                                  ("radial_pairs", pair_offsets), ("triplet_a", pair_offsets),
                                  ("triplet_b", pair_offsets))},
            pair_shift_A=torch.cat([s.graph.pair_shift_A for s in samples]))
        return self.graph_batch(samples, graph)



def load_exported(path: str | Path) -> tuple[AenetArchitecture, AenetModel]:
    """(architecture, model) from a file written by `AenetArchitecture.export`."""
    return AenetArchitecture.load_exported(path)


class AenetCalculator(ExportedModelCalculator):
    """ASE calculator of one exported aenet model (energy in eV, forces in eV/Å)."""

    def __init__(self, model_path: str | Path, **kwargs: Any):
        super().__init__(model_path, loader=load_exported, **kwargs)
