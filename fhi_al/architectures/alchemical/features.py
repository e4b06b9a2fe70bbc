"""Power-spectrum (SOAP) features with alchemical compression: neighbour species are mixed into a few
learnable pseudo-species before the density is expanded, so the feature size does not depend on the elements.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from ase import Atoms

from .basis import LaplacianEigenstateBasis, real_spherical_harmonics
from ...neighbours import neighbour_list

log = logging.getLogger(__name__)

SELF_DISTANCE_A = 1.0e-12  # neighbours closer than this are the atom itself
LAYER_NORM_EPS = 1.0e-5


@dataclass
class NeighbourPairs:
    """Directed pairs i -> j within the cutoff; r_ij = pos[j] - pos[i] + shift_A."""

    centre: torch.Tensor  # [P] long
    neighbour: torch.Tensor  # [P] long
    shift_A: torch.Tensor  # [P, 3]

    def to(self, device: torch.device | str) -> "NeighbourPairs":
        return NeighbourPairs(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @classmethod
    def concatenate(cls, graphs: list["NeighbourPairs"], atom_offsets: np.ndarray) -> "NeighbourPairs":
        return cls(centre=torch.cat([g.centre + int(o) for g, o in zip(graphs, atom_offsets)]),
                   neighbour=torch.cat([g.neighbour + int(o) for g, o in zip(graphs, atom_offsets)]),
                   shift_A=torch.cat([g.shift_A for g in graphs]))


def build_pairs(atoms: Atoms, *, cutoff_A: float, dtype: torch.dtype = torch.float64) -> NeighbourPairs:
    """All neighbour pairs within `cutoff_A` (periodic images included), found once per structure."""
    i, j, distance, shift = neighbour_list("ijdS", atoms, cutoff_A)
    keep = distance > SELF_DISTANCE_A
    shift_A = shift[keep] @ np.asarray(atoms.cell.array, dtype=float)
    return NeighbourPairs(centre=torch.as_tensor(i[keep], dtype=torch.long),
                          neighbour=torch.as_tensor(j[keep], dtype=torch.long),
                          shift_A=torch.as_tensor(shift_A, dtype=dtype))


class AlchemicalPowerSpectrum(torch.nn.Module):
    """p_i[l, (a n), (b n')] = (2l+1)^-1/2 sum_m c_i[a n l m] c_i[b n' l m], with the compressed density
    c_i[a n l m] = s sum_j U[Z_j, a] R_nl(r_ij) Y_lm(r_ij / |r_ij|) and a = 1 .. num_pseudo_species.

    Only the upper triangle in ((a n), (b n')) is kept (off-diagonal terms times sqrt 2, so that dot
    products of features equal those of the full spectrum). `compression` U [num_elements, num_pseudo] is
    the only parameter whose size depends on the number of elements.
    """

    def __init__(self, *, num_elements: int, num_pseudo_species: int, cutoff_A: float, basis_cutoff: float,
                 radial_basis_type: str, basis_scale_A: float, trainable_basis: bool, normalize: bool):
        super().__init__()
        self.num_pseudo_species, self.normalize = int(num_pseudo_species), bool(normalize)
        self.basis = LaplacianEigenstateBasis(cutoff_A=cutoff_A, basis_cutoff=basis_cutoff,
                                              radial_basis_type=radial_basis_type, basis_scale_A=basis_scale_A,
                                              trainable=trainable_basis)
        self.compression = torch.nn.Parameter(torch.randn(num_elements, self.num_pseudo_species))
        self.register_buffer("density_scale", torch.tensor(1.0))
        for l, n in enumerate(self.basis.num_per_l):
            size = self.num_pseudo_species * n
            rows, cols = torch.triu_indices(size, size)
            self.register_buffer(f"triu_rows_{l}", rows)
            self.register_buffer(f"triu_cols_{l}", cols)
            weight = torch.full(rows.shape, math.sqrt(2.0), dtype=torch.float64)
            self.register_buffer(f"triu_weight_{l}", weight.masked_fill(rows == cols, 1.0))

    @property
    def num_features(self) -> int:
        sizes = [self.num_pseudo_species * n for n in self.basis.num_per_l]
        return sum(k * (k + 1) // 2 for k in sizes)

    def pseudo_species_weights(self, element_index: torch.Tensor) -> torch.Tensor:
        """Rows of U for the given element indices: [N, num_pseudo_species]."""
        return self.compression[element_index]

    def forward(self, positions_A: torch.Tensor, element_index: torch.Tensor,
                pairs: NeighbourPairs) -> torch.Tensor:
        """Features [num_atoms, num_features]; differentiable with respect to positions."""
        vectors = positions_A[pairs.neighbour] - positions_A[pairs.centre] + pairs.shift_A
        distances = torch.linalg.norm(vectors, dim=-1)
        radial = self.basis(distances)
        angular = real_spherical_harmonics(vectors / distances.unsqueeze(-1), self.basis.l_max)
        weights = self.pseudo_species_weights(element_index[pairs.neighbour]) * self.density_scale
        num_atoms = positions_A.shape[0]
        parts = []
        for l, (radial_l, angular_l) in enumerate(zip(radial, angular)):
            terms = (weights[:, :, None, None] * radial_l[:, None, :, None] * angular_l[:, None, None, :])
            terms = terms.reshape(terms.shape[0], self.num_pseudo_species * radial_l.shape[-1], 2 * l + 1)
            density = terms.new_zeros(num_atoms, terms.shape[1], 2 * l + 1).index_add(0, pairs.centre, terms)
            spectrum = torch.einsum("nkm,nqm->nkq", density, density) / math.sqrt(2 * l + 1)
            rows, cols = getattr(self, f"triu_rows_{l}"), getattr(self, f"triu_cols_{l}")
            parts.append(spectrum[:, rows, cols] * getattr(self, f"triu_weight_{l}"))
        features = torch.cat(parts, dim=-1)
        if self.normalize:
            features = torch.nn.functional.layer_norm(features, features.shape[-1:], eps=LAYER_NORM_EPS)
        return features
