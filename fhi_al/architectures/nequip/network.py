"""The NequIP-style E(3)-equivariant message-passing network (Batzner et al., Nat. Commun. 13, 2453 (2022)) on e3nn.

Species embedding -> interaction layers (convolution weighted by a radial MLP of Bessel x cutoff, gate) -> scalars.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import mace  # noqa: F401  - mace must be imported before anything imports e3nn
import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from mace.modules.radial import BesselBasis, PolynomialCutoff

from ...errors import InputError
from .hypers import NequipHypers

log = logging.getLogger(__name__)

MAX_ATOMIC_NUMBER = 118
EVEN, ODD = 1, -1
# nequip's defaults: odd scalars need an odd activation, odd gates an even one (the gated irrep keeps its parity).
SCALAR_ACTIVATIONS = {EVEN: torch.nn.functional.silu, ODD: torch.tanh}
GATE_ACTIVATIONS = {EVEN: torch.nn.functional.silu, ODD: torch.abs}
READOUT_HIDDEN_FRACTION = 2  # the readout's hidden scalars: num_features // 2, as nequip


@dataclass
class NequipInputs:
    """Model inputs of a batch: atoms of all structures concatenated, edge indices offset accordingly.

    Edge e points from its centre atom `receiver[e]` to the neighbour `sender[e]` (image shifted by shift_A[e]):
    r_e = pos[sender] - pos[receiver] + shift_A.
    """

    positions_A: torch.Tensor  # [N, 3]
    numbers: torch.Tensor  # [N] atomic numbers
    receiver: torch.Tensor  # [E] long
    sender: torch.Tensor  # [E] long
    shift_A: torch.Tensor  # [E, 3]
    structure_index: torch.Tensor  # [N]
    num_structures: int

    def to(self, device: torch.device | str) -> "NequipInputs":
        moved = {name: (value.to(device) if isinstance(value, torch.Tensor) else value)
                 for name, value in vars(self).items()}
        return NequipInputs(**moved)


def hidden_irreps(num_features: int, l_max: int, parity: bool) -> o3.Irreps:
    """num_features x every (l, p) with l <= l_max: both parities, or only p = (-1)^l without `parity`."""
    parities = (EVEN, ODD) if parity else None
    irreps = [(num_features, (l, p)) for l in range(l_max + 1) for p in (parities or ((-1) ** l,))]
    return o3.Irreps(irreps).sort().irreps.simplify()


def tp_path_exists(irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, ir_out: o3.Irrep | str) -> bool:
    ir_out = o3.Irrep(ir_out)
    return any(ir_out in ir1 * ir2 for _, ir1 in irreps_in1 for _, ir2 in irreps_in2)


class Convolution(torch.nn.Module):
    """Linear -> tensor product of neighbour features with Y(r_ij), path weights from a radial MLP -> sum over
    neighbours / sqrt(avg_num_neighbors) -> linear, plus a species-dependent self-interaction."""

    def __init__(self, *, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_out: o3.Irreps, num_species: int,
                 num_basis: int, invariant_layers: int, invariant_neurons: int):
        super().__init__()
        self.linear_in = o3.Linear(irreps_in, irreps_in)
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_edge) in enumerate(irreps_sh):
                for ir_mid in ir_in * ir_edge:
                    if ir_mid in irreps_out:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_mid))
        irreps_mid, permutation, _ = o3.Irreps(mid).sort()
        instructions = [(i, j, permutation[k], mode, train) for i, j, k, mode, train in instructions]
        self.tensor_product = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions,
                                               shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([num_basis] + [invariant_neurons] * invariant_layers
                                        + [self.tensor_product.weight_numel], torch.nn.functional.silu)
        self.linear_out = o3.Linear(irreps_mid, irreps_out)
        self.self_interaction = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{num_species}x0e"),
                                                               irreps_out)

    def forward(self, h: torch.Tensor, species_onehot: torch.Tensor, edges: "EdgeFeatures") -> torch.Tensor:
        skip = self.self_interaction(h, species_onehot)
        x = self.linear_in(h)
        messages = self.tensor_product(x[edges.sender], edges.sh, self.radial(edges.embedding))
        summed = messages.new_zeros(h.shape[0], messages.shape[1]).index_add(0, edges.receiver, messages)
        return self.linear_out(summed * edges.neighbour_norm) + skip


class InteractionLayer(torch.nn.Module):
    """Convolution into gate inputs, then the gated nonlinearity; residual when the irreps are unchanged."""

    def __init__(self, *, irreps_in: o3.Irreps, irreps_hidden: o3.Irreps, irreps_sh: o3.Irreps, resnet: bool,
                 **conv_kwargs):
        super().__init__()
        reachable = [(mul, ir) for mul, ir in irreps_hidden if tp_path_exists(irreps_in, irreps_sh, ir)]
        scalars = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l > 0])
        gate_irrep = o3.Irrep("0e" if tp_path_exists(irreps_in, irreps_sh, "0e") else "0o")
        gates = o3.Irreps([(mul, gate_irrep) for mul, _ in gated])
        self.gate = Gate(scalars, [SCALAR_ACTIVATIONS[ir.p] for _, ir in scalars],
                         gates, [GATE_ACTIVATIONS[gate_irrep.p]] * len(gates), gated)
        self.convolution = Convolution(irreps_in=irreps_in, irreps_sh=irreps_sh, irreps_out=self.gate.irreps_in,
                                       **conv_kwargs)
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(self.gate.irreps_out)
        self.resnet = bool(resnet) and self.irreps_in == self.irreps_out

    def forward(self, h: torch.Tensor, species_onehot: torch.Tensor, edges: "EdgeFeatures") -> torch.Tensor:
        update = self.gate(self.convolution(h, species_onehot, edges))
        return h + update if self.resnet else update


@dataclass
class EdgeFeatures:
    receiver: torch.Tensor
    sender: torch.Tensor
    sh: torch.Tensor  # [E, (l_max+1)^2] spherical harmonics of the edge directions
    embedding: torch.Tensor  # [E, num_basis] Bessel x cutoff of the edge lengths
    neighbour_norm: torch.Tensor  # 1 / sqrt(avg_num_neighbors)


class NequipModel(torch.nn.Module):
    """E = sum_i [shift_Z(i) + scale_Z(i) * readout(h_i)]; every statistics-derived number is a buffer."""

    def __init__(self, *, hypers: NequipHypers, species: Sequence[int]):
        super().__init__()
        species = sorted(int(z) for z in species)
        self.hypers_dict = asdict(hypers)  # travels with exported files
        h = hypers
        self.irreps_sh = o3.Irreps.spherical_harmonics(h.l_max)
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.bessel = BesselBasis(r_max=h.r_max, num_basis=h.num_basis)
        self.cutoff = PolynomialCutoff(r_max=h.r_max, p=h.PolynomialCutoff_p)
        irreps = o3.Irreps(f"{h.num_features}x0e")
        self.embedding = o3.Linear(o3.Irreps(f"{len(species)}x0e"), irreps)
        hidden = hidden_irreps(h.num_features, h.l_max, h.parity)
        layers = []
        for _ in range(h.num_layers):
            layers.append(InteractionLayer(
                irreps_in=irreps, irreps_hidden=hidden, irreps_sh=self.irreps_sh, resnet=h.resnet,
                num_species=len(species), num_basis=h.num_basis, invariant_layers=h.invariant_layers,
                invariant_neurons=h.invariant_neurons))
            irreps = layers[-1].irreps_out
        self.layers = torch.nn.ModuleList(layers)
        readout_width = max(1, h.num_features // READOUT_HIDDEN_FRACTION)
        self.readout = torch.nn.Sequential(o3.Linear(irreps, o3.Irreps(f"{readout_width}x0e")),
                                           o3.Linear(o3.Irreps(f"{readout_width}x0e"), o3.Irreps("1x0e")))
        index = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        index[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("atomic_numbers", torch.tensor(species, dtype=torch.long))
        self.register_buffer("species_index_of_z", index)
        self.register_buffer("avg_num_neighbors", torch.tensor(1.0))
        self.register_buffer("energy_shift_eV", torch.zeros(len(species)))
        self.register_buffer("energy_scale_eV", torch.ones(len(species)))

    @property
    def species(self) -> list[int]:
        return [int(z) for z in self.atomic_numbers]

    def layer_irreps(self) -> list[o3.Irreps]:
        """Irreps of the node features returned by `node_features`: embedding, then each layer."""
        return [self.embedding.irreps_out] + [layer.irreps_out for layer in self.layers]

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        index = self.species_index_of_z[numbers]
        if bool((index < 0).any()):
            unknown = sorted({int(z) for z in numbers[index < 0]})
            raise InputError(f"elements {unknown} are not among the model's elements {self.species}; "
                             f"add structures containing them to the training set", where="NequIP model")
        return index

    def edge_features(self, inputs: NequipInputs, positions_A: torch.Tensor) -> EdgeFeatures:
        vectors = positions_A[inputs.sender] - positions_A[inputs.receiver] + inputs.shift_A
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)
        embedding = self.bessel(lengths) * self.cutoff(lengths)
        return EdgeFeatures(receiver=inputs.receiver, sender=inputs.sender, sh=self.spherical_harmonics(vectors),
                            embedding=embedding, neighbour_norm=self.avg_num_neighbors.rsqrt())

    def node_features(self, inputs: NequipInputs, positions_A: torch.Tensor) -> list[torch.Tensor]:
        """Node features after the embedding and after each interaction layer (irreps: `layer_irreps`)."""
        species = self.species_index(inputs.numbers)
        onehot = torch.nn.functional.one_hot(species, len(self.species)).to(positions_A.dtype)
        edges = self.edge_features(inputs, positions_A)
        features = [self.embedding(onehot)]
        for layer in self.layers:
            features.append(layer(features[-1], onehot, edges))
        return features

    def atomic_energies(self, inputs: NequipInputs, positions_A: torch.Tensor) -> torch.Tensor:
        """Energy of every atom [N] in eV."""
        species = self.species_index(inputs.numbers)
        output = self.readout(self.node_features(inputs, positions_A)[-1]).squeeze(-1)
        return self.energy_shift_eV[species] + self.energy_scale_eV[species] * output

    def forward(self, inputs: NequipInputs, positions_A: torch.Tensor) -> torch.Tensor:
        """Energy per structure [num_structures] in eV."""
        atomic = self.atomic_energies(inputs, positions_A)
        return atomic.new_zeros(inputs.num_structures).index_add(0, inputs.structure_index, atomic)
