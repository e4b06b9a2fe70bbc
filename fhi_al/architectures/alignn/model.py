"""ALIGNN with atom-wise energies: E = sum_i [E0(Z_i) + shift + scale * readout(h_i)], forces = -dE/dR.

Bond lengths and angle cosines are computed from positions inside `forward` (so autograd gives forces); the
graphs' indices come from `featurize`. `AlignnArchitecture` plugs the model into the engine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from ase import Atoms

from ...errors import InputError
from ..exported import AtomwiseModel, ExportedModelCalculator, GraphInputs, GraphSample, PositionsArchitecture
from ..base import Batch, DatasetStatistics
from .graph import BondGraph, build_graph, concatenate
from .hypers import AlignnHypers
from .layers import AlignnLayer, EdgeGatedGraphConv, GaussianBasis, MLPLayer, PolynomialEnvelope

log = logging.getLogger(__name__)

MAX_ATOMIC_NUMBER = 118
EXPORT_FORMAT = "fhi_al.alignn"
COSINE_RANGE = (-1.0, 1.0)


def bond_geometry(positions_A: torch.Tensor, graph: BondGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """(bond lengths [B] in Å, cosines of the angles at the shared atom [T]), differentiable in positions."""
    vectors = positions_A[graph.bond_j] - positions_A[graph.bond_i] + graph.bond_shift_A
    lengths = torch.linalg.norm(vectors, dim=-1)
    src, dst = graph.triplet_src, graph.triplet_dst
    cosines = (vectors[src] * vectors[dst]).sum(-1) / (lengths[src] * lengths[dst])
    return lengths, cosines


class AlignnModel(AtomwiseModel):
    """Embeddings, ALIGNN layers, GCN layers and an atom-wise linear readout; statistics are buffers."""

    def __init__(self, *, hypers: AlignnHypers, species: Sequence[int]):
        super().__init__()
        species = sorted(int(z) for z in species)
        width, embed, norm = hypers.hidden_features, hypers.embedding_features, hypers.normalization
        self.element_embedding = torch.nn.Embedding(len(species), embed)
        self.atom_embedding = MLPLayer(embed, width, normalization=norm)
        self.bond_embedding = torch.nn.Sequential(
            GaussianBasis(low=0.0, high=hypers.cutoff, count=hypers.edge_input_features),
            MLPLayer(hypers.edge_input_features, embed, normalization=norm),
            MLPLayer(embed, width, normalization=norm))
        self.angle_embedding = torch.nn.Sequential(
            GaussianBasis(low=COSINE_RANGE[0], high=COSINE_RANGE[1], count=hypers.triplet_input_features),
            MLPLayer(hypers.triplet_input_features, embed, normalization=norm),
            MLPLayer(embed, width, normalization=norm))
        self.envelope = PolynomialEnvelope(cutoff_A=hypers.cutoff, exponent=hypers.envelope_exponent)
        self.alignn_layers = torch.nn.ModuleList(
            AlignnLayer(width, normalization=norm) for _ in range(hypers.alignn_layers))
        self.gcn_layers = torch.nn.ModuleList(
            EdgeGatedGraphConv(width, normalization=norm) for _ in range(hypers.gcn_layers))
        self.readout = torch.nn.Linear(width, 1)
        index = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        index[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("atomic_numbers", torch.tensor(species, dtype=torch.long))
        self.register_buffer("species_index_of_z", index)
        self.register_buffer("atomic_energies_eV", torch.zeros(len(species)))
        self.register_buffer("energy_shift_eV", torch.tensor(0.0))
        self.register_buffer("energy_scale_eV", torch.tensor(1.0))
        # sums over neighbours are divided by these typical counts (set once, from the first training set)
        self.register_buffer("bond_norm", torch.tensor(1.0))
        self.register_buffer("angle_norm", torch.tensor(1.0))

    @property
    def species(self) -> list[int]:
        return [int(z) for z in self.atomic_numbers]

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        index = self.species_index_of_z[numbers]
        if bool((index < 0).any()):
            unknown = sorted({int(z) for z in numbers[index < 0]})
            raise InputError(f"elements {unknown} are not among the model's elements {self.species}; "
                             f"add structures containing them to the training set", where="ALIGNN model")
        return index

    def atomic_energies(self, inputs: GraphInputs, positions_A: torch.Tensor) -> torch.Tensor:
        """Energy of every atom [N] in eV."""
        graph = inputs.graph
        species = self.species_index(inputs.numbers)
        lengths, cosines = bond_geometry(positions_A, graph)
        bond_weight = self.envelope(lengths)
        angle_weight = bond_weight[graph.triplet_src] * bond_weight[graph.triplet_dst]
        atoms = self.atom_embedding(self.element_embedding(species))
        bonds, angles = self.bond_embedding(lengths), self.angle_embedding(cosines)
        for layer in self.alignn_layers:
            atoms, bonds, angles = layer(atoms, bonds, angles, graph=graph, bond_weight=bond_weight,
                                         angle_weight=angle_weight, bond_norm=self.bond_norm,
                                         angle_norm=self.angle_norm)
        for layer in self.gcn_layers:
            atoms, bonds = layer(atoms, bonds, src=graph.bond_i, dst=graph.bond_j, weight=bond_weight,
                                 neighbour_norm=self.bond_norm)
        output = self.readout(atoms).squeeze(-1)
        return self.atomic_energies_eV[species] + self.energy_shift_eV + self.energy_scale_eV * output


class AlignnArchitecture(PositionsArchitecture):
    export_format = EXPORT_FORMAT
    export_label = "ALIGNN"
    name = "ALIGNN"
    Hypers = AlignnHypers
    checkpoint_version = 1

    @property
    def cutoff_A(self) -> float:
        return float(self.hypers.cutoff)

    def empty_model(self, species: Sequence[int]) -> AlignnModel:
        """A model of the right shape for `species` (weights random, statistics neutral): for loading states."""
        return AlignnModel(hypers=self.hypers, species=species).to(self.dtype)

    def build_model(self, stats: DatasetStatistics, *, seed: int) -> AlignnModel:
        model = self.seeded_model(stats.species, seed)
        neighbours = max(1.0, float(stats.num_neighbors_mean))
        model.bond_norm.fill_(neighbours)
        model.angle_norm.fill_(max(1.0, neighbours - 1.0))  # other bonds of the same atom
        self.update_statistics(model, stats)
        return model

    def update_statistics(self, model: torch.nn.Module, stats: DatasetStatistics) -> None:
        """E0s, energy shift (mean per-atom energy) and scale (force RMS x 1 Å) from the current training set;
        trained weights and the neighbour normalisation stay untouched."""
        self.set_energy_statistics(model, stats, shift_eV=stats.per_atom_energy_mean, scale_eV=float(stats.forces_rms))

    def featurize(self, atoms: Atoms) -> GraphSample:
        hypers = self.hypers
        return self.graph_sample(atoms, build_graph(atoms, cutoff_A=hypers.cutoff, strategy=hypers.neighbor_strategy,
                                                    max_neighbors=hypers.max_neighbors, dtype=self.dtype))

    def collate(self, samples: Sequence[GraphSample]) -> Batch:
        return self.graph_batch(samples, concatenate([s.graph for s in samples], [len(s.numbers) for s in samples]))



def load_exported(path: str | Path) -> tuple[AlignnArchitecture, AlignnModel]:
    """(architecture, model) from a file written by `AlignnArchitecture.export`."""
    return AlignnArchitecture.load_exported(path)


class AlignnCalculator(ExportedModelCalculator):
    """ASE calculator of one exported ALIGNN model (energy in eV, forces in eV/Å)."""

    def __init__(self, model_path: str | Path, **kwargs: Any):
        super().__init__(model_path, loader=load_exported, **kwargs)
