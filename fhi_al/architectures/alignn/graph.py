"""ALIGNN's two graphs as index arrays: the atom graph (directed bonds i -> j) and its line graph (bond pairs
sharing their first atom, i.e. bond angles). Built once per structure with ASE; lengths and angles come later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np
import torch
from ase import Atoms
from ...neighbours import neighbour_list

log = logging.getLogger(__name__)

# Neighbours closer than this are the atom itself (a zero-length bond carries no direction).
SELF_DISTANCE_A = 1.0e-12
RADIUS_GRAPH, K_NEAREST = "radius_graph", "k_nearest"


@dataclass
class BondGraph:
    """Bonds i -> j with r_ij = pos[j] - pos[i] + bond_shift_A, and angle triplets as bond indices.

    Triplet t joins bond triplet_src[t] = (i -> k) to bond triplet_dst[t] = (i -> j), j != k (both orders are
    present): the line graph of ALIGNN without backtracking. Its angle is the one at atom i."""

    bond_i: torch.Tensor  # [B] long
    bond_j: torch.Tensor  # [B] long
    bond_shift_A: torch.Tensor  # [B, 3]
    triplet_src: torch.Tensor  # [T] long, a bond index
    triplet_dst: torch.Tensor  # [T] long, a bond index

    @property
    def num_bonds(self) -> int:
        return int(self.bond_i.shape[0])

    @property
    def num_triplets(self) -> int:
        return int(self.triplet_src.shape[0])

    def to(self, device: torch.device | str) -> "BondGraph":
        return BondGraph(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def concatenate(graphs: list[BondGraph], atom_counts: list[int]) -> BondGraph:
    """One graph of several structures: atom and bond indices offset by the sizes of the graphs before."""
    atom_offsets = np.cumsum([0] + list(atom_counts))
    bond_offsets = np.cumsum([0] + [g.num_bonds for g in graphs])

    def stacked(name: str, offsets: np.ndarray) -> torch.Tensor:
        return torch.cat([getattr(g, name) + int(offsets[k]) for k, g in enumerate(graphs)])

    return BondGraph(bond_i=stacked("bond_i", atom_offsets), bond_j=stacked("bond_j", atom_offsets),
                     bond_shift_A=torch.cat([g.bond_shift_A for g in graphs]),
                     triplet_src=stacked("triplet_src", bond_offsets),
                     triplet_dst=stacked("triplet_dst", bond_offsets))


def nearest_per_atom(centres: np.ndarray, distances: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` shortest bonds of every centre atom (ties in list order), sorted by centre."""
    order = np.lexsort((distances, centres))  # by centre, then by distance
    sorted_centres = centres[order]
    first_of_centre = np.searchsorted(sorted_centres, sorted_centres, side="left")
    rank = np.arange(len(order)) - first_of_centre
    return np.sort(order[rank < count])


def line_graph(bond_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) bond indices of every ordered pair of distinct bonds with the same first atom."""
    order = np.argsort(bond_i, kind="stable")
    counts = np.bincount(bond_i) if bond_i.size else np.zeros(0, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    sources, targets = [], []
    for start, count in zip(starts[counts > 1], counts[counts > 1]):
        a, b = np.meshgrid(np.arange(count), np.arange(count), indexing="ij")
        distinct = a != b
        sources.append(order[start + a[distinct]])
        targets.append(order[start + b[distinct]])
    if not sources:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(sources).astype(np.int64), np.concatenate(targets).astype(np.int64)


def build_graph(atoms: Atoms, *, cutoff_A: float, strategy: str = RADIUS_GRAPH, max_neighbors: int = 12,
                dtype: torch.dtype = torch.float64) -> BondGraph:
    """Bonds within `cutoff_A` (all, or the `max_neighbors` nearest per atom) and their line graph.

    Works without a cell (molecules) and with periodic cells (bonds to images carry the cell shift)."""
    i, j, distance, shift = neighbour_list("ijdS", atoms, float(cutoff_A))
    keep = np.flatnonzero(distance > SELF_DISTANCE_A)
    if strategy == K_NEAREST:
        keep = keep[nearest_per_atom(i[keep], distance[keep], int(max_neighbors))]
    elif strategy != RADIUS_GRAPH:
        raise ValueError(f"unknown neighbour strategy {strategy!r}")
    i, j, shift = i[keep], j[keep], shift[keep]
    shift_A = shift @ np.asarray(atoms.cell.array, dtype=float)
    src, dst = line_graph(i)
    return BondGraph(bond_i=torch.as_tensor(i, dtype=torch.long), bond_j=torch.as_tensor(j, dtype=torch.long),
                     bond_shift_A=torch.as_tensor(shift_A, dtype=dtype),
                     triplet_src=torch.as_tensor(src), triplet_dst=torch.as_tensor(dst))
