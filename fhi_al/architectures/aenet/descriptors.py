"""aenet's Chebyshev descriptor (Artrith, Urban, Ceder, PRB 96, 014112 (2017)) in torch, so forces come by autograd.

Neighbour pairs and angular triplets are found once per structure with ASE (`build_graph`); the
descriptor itself is recomputed from positions on every call (`ChebyshevDescriptor`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from ase import Atoms
from ...neighbours import neighbour_list

log = logging.getLogger(__name__)

# Neighbours closer than this are the atom itself (aenet's EPS); they carry no direction.
SELF_DISTANCE_A = 1.0e-12


def type_spins(num_species: int) -> list[float]:
    """aenet's per-element weights: -n/2 ... n/2 in steps of one, skipping 0 when n is even."""
    spins, spin = [], -(num_species // 2)
    for _ in range(num_species):
        if spin == 0 and num_species % 2 == 0:
            spin += 1
        spins.append(float(spin))
        spin += 1
    return spins


def chebyshev(x: torch.Tensor, order: int) -> torch.Tensor:
    """T_0(x) ... T_order(x) stacked on a new last axis (recurrence T_n+1 = 2x T_n - T_n-1)."""
    values = [torch.ones_like(x)]
    if order >= 1:
        values.append(x)
    for _ in range(2, order + 1):
        values.append(2.0 * x * values[-1] - values[-2])
    return torch.stack(values, dim=-1)


def cosine_cutoff(distance_A: torch.Tensor, cutoff_A: float) -> torch.Tensor:
    """0.5 (cos(pi r / Rc) + 1) inside the cutoff, 0 outside: value and slope vanish at Rc."""
    inside = 0.5 * (torch.cos(distance_A * (math.pi / cutoff_A)) + 1.0)
    return torch.where(distance_A < cutoff_A, inside, torch.zeros_like(inside))


@dataclass
class NeighbourGraph:
    """Pairs i -> j (j's image shifted by pair_shift_A) and angular triplets (j, i, k) as pair indices."""

    pair_i: torch.Tensor  # [P] long
    pair_j: torch.Tensor  # [P] long
    pair_shift_A: torch.Tensor  # [P, 3]: r_ij = pos[j] - pos[i] + shift
    radial_pairs: torch.Tensor  # [Pr] long: pairs inside rad_cutoff
    triplet_a: torch.Tensor  # [T] long: pair (i, j)
    triplet_b: torch.Tensor  # [T] long: pair (i, k), same centre, a < b

    def to(self, device: torch.device | str) -> "NeighbourGraph":
        return NeighbourGraph(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _triplets(centres: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair of pairs (a < b) among `candidates` that share a centre atom."""
    order = candidates[np.argsort(centres[candidates], kind="stable")]
    counts = np.bincount(centres[order]) if order.size else np.zeros(0, dtype=int)
    starts = np.cumsum(counts) - counts
    first, second, cache = [], [], {}
    for start, count in zip(starts[counts > 1], counts[counts > 1]):
        if count not in cache:
            cache[count] = np.triu_indices(count, 1)
        j, k = cache[count]
        first.append(order[start + j])
        second.append(order[start + k])
    if not first:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(first).astype(np.int64), np.concatenate(second).astype(np.int64)


def build_graph(atoms: Atoms, *, rad_cutoff_A: float, ang_cutoff_A: float,
                dtype: torch.dtype = torch.float64) -> NeighbourGraph:
    """Neighbour pairs within max(rad_cutoff, ang_cutoff) and the angular triplets within ang_cutoff."""
    cutoff_A = max(rad_cutoff_A, ang_cutoff_A)
    i, j, distance, shift = neighbour_list("ijdS", atoms, cutoff_A)
    keep = distance > SELF_DISTANCE_A
    i, j, distance, shift = i[keep], j[keep], distance[keep], shift[keep]
    shift_A = shift @ np.asarray(atoms.cell.array, dtype=float)
    triplet_a, triplet_b = _triplets(i, np.flatnonzero(distance < ang_cutoff_A))
    return NeighbourGraph(
        pair_i=torch.as_tensor(i, dtype=torch.long), pair_j=torch.as_tensor(j, dtype=torch.long),
        pair_shift_A=torch.as_tensor(shift_A, dtype=dtype),
        radial_pairs=torch.as_tensor(np.flatnonzero(distance < rad_cutoff_A), dtype=torch.long),
        triplet_a=torch.as_tensor(triplet_a), triplet_b=torch.as_tensor(triplet_b))


class ChebyshevDescriptor(torch.nn.Module):
    """Per-atom features [radial, angular] plus, for several elements, their species-weighted copies.

    radial_n(i)  = sum_j T_n(x(r_ij)) fc(r_ij),                x maps [min_cutoff, rad_cutoff] onto [-1, 1]
    angular_n(i) = sum_{j<k} T_n(cos theta_jik) fc(r_ij) fc(r_ik)   (angular cutoff)
    The weighted copies multiply each term by s_j (radial) or s_j s_k (angular), s = `type_spins`.
    """

    def __init__(self, *, rad_order: int, rad_cutoff_A: float, ang_order: int, ang_cutoff_A: float,
                 min_cutoff_A: float, num_species: int, species_weighted: bool = True):
        super().__init__()
        self.rad_order, self.ang_order = int(rad_order), int(ang_order)
        self.rad_cutoff_A, self.ang_cutoff_A = float(rad_cutoff_A), float(ang_cutoff_A)
        self.min_cutoff_A = float(min_cutoff_A)
        self.weighted = bool(species_weighted) and num_species > 1
        self.register_buffer("spins", torch.tensor(type_spins(num_species), dtype=torch.get_default_dtype()))

    @property
    def num_radial(self) -> int:
        return self.rad_order + 1

    @property
    def num_angular(self) -> int:
        return self.ang_order + 1

    @property
    def num_features(self) -> int:
        return (self.num_radial + self.num_angular) * (2 if self.weighted else 1)

    def forward(self, positions_A: torch.Tensor, species: torch.Tensor, graph: NeighbourGraph) -> torch.Tensor:
        vectors = positions_A[graph.pair_j] - positions_A[graph.pair_i] + graph.pair_shift_A
        distances = torch.linalg.norm(vectors, dim=-1)
        spins = self.spins[species[graph.pair_j]]
        num_atoms = positions_A.shape[0]
        radial = self._radial(distances, spins, graph, num_atoms)
        angular = self._angular(vectors, distances, spins, graph, num_atoms)
        parts = [radial[0], angular[0]] + ([radial[1], angular[1]] if self.weighted else [])
        return torch.cat(parts, dim=-1)

    def _radial(self, distances, spins, graph, num_atoms):
        pairs = graph.radial_pairs
        r = distances[pairs]
        x = (2.0 * r - (self.min_cutoff_A + self.rad_cutoff_A)) / (self.rad_cutoff_A - self.min_cutoff_A)
        terms = chebyshev(x, self.rad_order) * cosine_cutoff(r, self.rad_cutoff_A).unsqueeze(-1)
        centres = graph.pair_i[pairs]
        plain = terms.new_zeros(num_atoms, self.num_radial).index_add(0, centres, terms)
        if not self.weighted:
            return plain, None
        weighted = terms.new_zeros(num_atoms, self.num_radial).index_add(
            0, centres, terms * spins[pairs].unsqueeze(-1))
        return plain, weighted

    def _angular(self, vectors, distances, spins, graph, num_atoms):
        a, b = graph.triplet_a, graph.triplet_b
        r_a, r_b = distances[a], distances[b]
        cosine = (vectors[a] * vectors[b]).sum(-1) / (r_a * r_b)
        weight = cosine_cutoff(r_a, self.ang_cutoff_A) * cosine_cutoff(r_b, self.ang_cutoff_A)
        terms = chebyshev(cosine, self.ang_order) * weight.unsqueeze(-1)
        centres = graph.pair_i[a]
        plain = terms.new_zeros(num_atoms, self.num_angular).index_add(0, centres, terms)
        if not self.weighted:
            return plain, None
        weighted = terms.new_zeros(num_atoms, self.num_angular).index_add(
            0, centres, terms * (spins[a] * spins[b]).unsqueeze(-1))
        return plain, weighted
