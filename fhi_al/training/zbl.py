"""Ziegler-Biersack-Littmark screened nuclear repulsion: a pair potential the engine can add to any
architecture so that atoms that come too close are pushed apart (eV, Å), switched smoothly to zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from ..neighbours import neighbour_list

log = logging.getLogger(__name__)

COULOMB_EV_A = 14.399645478425668  # e^2 / (4 pi eps0) in eV·Å
BOHR_A = 0.529177210903
ZBL_LENGTH_FACTOR = 0.8854  # a = 0.8854 a0 / (Zi^0.23 + Zj^0.23)
ZBL_EXPONENT = 0.23
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_DECAYS = (3.19980, 0.94229, 0.40290, 0.20162)


@dataclass
class PairList:
    """Ordered pairs (both directions) within the ZBL cutoff of one structure or a batch of them."""

    first: torch.Tensor  # [P] atom index
    second: torch.Tensor  # [P]
    shift_A: torch.Tensor  # [P, 3]: r_ij = R[second] - R[first] + shift
    numbers: torch.Tensor  # [N] atomic numbers
    structure_index: torch.Tensor  # [N]
    num_structures: int

    def to(self, device) -> "PairList":
        return PairList(first=self.first.to(device), second=self.second.to(device), shift_A=self.shift_A.to(device),
                        numbers=self.numbers.to(device), structure_index=self.structure_index.to(device),
                        num_structures=self.num_structures)


def pair_list(atoms: Atoms, *, cutoff_A: float, dtype: torch.dtype) -> PairList:
    """Pairs of one structure within `cutoff_A` (periodic images included)."""
    first, second, shifts = neighbour_list("ijS", atoms, cutoff_A)
    shift_A = shifts @ np.asarray(atoms.cell.array, dtype=float)
    return PairList(first=torch.as_tensor(first, dtype=torch.long), second=torch.as_tensor(second, dtype=torch.long),
                    shift_A=torch.as_tensor(shift_A, dtype=dtype), numbers=torch.tensor(atoms.numbers),
                    structure_index=torch.zeros(len(atoms), dtype=torch.long), num_structures=1)


def collate_pairs(parts: list[PairList]) -> PairList:
    offsets = np.cumsum([0] + [len(p.numbers) for p in parts])
    return PairList(
        first=torch.cat([p.first + int(offsets[k]) for k, p in enumerate(parts)]),
        second=torch.cat([p.second + int(offsets[k]) for k, p in enumerate(parts)]),
        shift_A=torch.cat([p.shift_A for p in parts]), numbers=torch.cat([p.numbers for p in parts]),
        structure_index=torch.cat([torch.full((len(p.numbers),), k, dtype=torch.long) for k, p in enumerate(parts)]),
        num_structures=len(parts))


def smooth_switch(distance_A: torch.Tensor, *, cutoff_A: float, width_A: float) -> torch.Tensor:
    """1 below cutoff - width, 0 from the cutoff on, a quintic step in between: value, first and second
    derivatives are continuous, so energy and forces go to zero at the cutoff."""
    t = ((distance_A - (cutoff_A - width_A)) / width_A).clamp(0.0, 1.0)
    return 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t**2)


def zbl_pair_energy(distance_A: torch.Tensor, z_first: torch.Tensor, z_second: torch.Tensor) -> torch.Tensor:
    """Unswitched ZBL energy (eV) of pairs at `distance_A` with atomic numbers z_first, z_second."""
    zi, zj = z_first.to(distance_A.dtype), z_second.to(distance_A.dtype)
    length = ZBL_LENGTH_FACTOR * BOHR_A / (zi**ZBL_EXPONENT + zj**ZBL_EXPONENT)
    x = distance_A / length
    screening = sum(c * torch.exp(-d * x) for c, d in zip(ZBL_COEFFICIENTS, ZBL_DECAYS))
    return COULOMB_EV_A * zi * zj / distance_A * screening


def zbl_energy(pairs: PairList, positions_A: torch.Tensor, *, cutoff_A: float, width_A: float) -> torch.Tensor:
    """Switched ZBL energy per structure [num_structures] (eV); differentiable in positions_A."""
    vectors = positions_A[pairs.second] - positions_A[pairs.first] + pairs.shift_A
    distance = vectors.norm(dim=-1)
    inside = distance < cutoff_A
    pair_energy = zbl_pair_energy(distance[inside], pairs.numbers[pairs.first[inside]],
                                  pairs.numbers[pairs.second[inside]])
    pair_energy = 0.5 * pair_energy * smooth_switch(distance[inside], cutoff_A=cutoff_A, width_A=width_A)
    owner = pairs.structure_index[pairs.first[inside]]
    return positions_A.new_zeros(pairs.num_structures).index_add(0, owner, pair_energy)


def zbl_energy_forces(pairs: PairList, positions_A: torch.Tensor, *, cutoff_A: float,
                      width_A: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(energy [num_structures] eV, forces [num_atoms, 3] eV/Å = -dE/dR); no graph is kept (no parameters)."""
    with torch.enable_grad():
        positions = positions_A.detach().requires_grad_(True)
        energy = zbl_energy(pairs, positions, cutoff_A=cutoff_A, width_A=width_A)
        if not energy.requires_grad:  # no pair inside the cutoff
            return energy.detach(), torch.zeros_like(positions_A)
        (gradient,) = torch.autograd.grad(energy.sum(), positions)
    return energy.detach(), -gradient
