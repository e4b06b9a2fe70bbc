"""Building blocks of ALIGNN (Choudhary & DeCost, npj Comput. Mater. 7, 185 (2021)) in plain torch, no DGL:
Gaussian expansions, a smooth cutoff envelope, MLP layers and the edge-gated graph convolution.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class GaussianBasis(torch.nn.Module):
    """exp(-gamma (x - mu_k)^2) for `count` centres mu_k evenly spaced on [low, high], gamma = 1 / spacing
    (ALIGNN's RBFExpansion)."""

    def __init__(self, *, low: float, high: float, count: int):
        super().__init__()
        centres = torch.linspace(float(low), float(high), int(count), dtype=torch.float64)
        self.register_buffer("centres", centres)
        self.gamma = 1.0 / float(centres[1] - centres[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (x.unsqueeze(-1) - self.centres) ** 2)


class PolynomialEnvelope(torch.nn.Module):
    """DimeNet's envelope u(r / Rc): 1 at 0, and its value, slope and curvature vanish at Rc; 0 beyond."""

    def __init__(self, *, cutoff_A: float, exponent: int):
        super().__init__()
        self.cutoff_A, self.p = float(cutoff_A), int(exponent)

    def forward(self, distance_A: torch.Tensor) -> torch.Tensor:
        p, x = self.p, distance_A / self.cutoff_A
        value = (1.0 - 0.5 * (p + 1) * (p + 2) * x ** p + p * (p + 2) * x ** (p + 1)
                 - 0.5 * p * (p + 1) * x ** (p + 2))
        return torch.where(x < 1.0, value, torch.zeros_like(value))


def norm_layer(width: int, kind: str) -> torch.nn.Module:
    """Per-row normalisation: rows are independent, so a structure's energy never depends on its batch."""
    return torch.nn.LayerNorm(width) if kind == "layer" else torch.nn.Identity()


class MLPLayer(torch.nn.Sequential):
    """Linear -> normalisation -> SiLU (ALIGNN's MLPLayer)."""

    def __init__(self, in_features: int, out_features: int, *, normalization: str):
        super().__init__(torch.nn.Linear(in_features, out_features), norm_layer(out_features, normalization),
                         torch.nn.SiLU())


class EdgeGatedGraphConv(torch.nn.Module):
    """ALIGNN's edge-gated convolution (after Bresson & Laurent) with residual connections, on a graph
    given as src/dst index arrays.

    gate_e  = A h_src + B h_dst + C e                       (also the edge update before norm and SiLU)
    h_dst  += SiLU(norm(U h_dst + sum_e w_e sigmoid(gate_e) V h_src / neighbour_norm))
    e      += SiLU(norm(gate_e))
    w_e is the smooth cutoff weight of the message, so messages fade out instead of jumping when a bond
    leaves the cutoff; ALIGNN divides by sum sigmoid(gate_e) instead of the fixed `neighbour_norm`,
    which is not smooth when the first neighbour enters."""

    def __init__(self, width: int, *, normalization: str):
        super().__init__()
        self.src_gate, self.dst_gate = torch.nn.Linear(width, width), torch.nn.Linear(width, width)
        self.edge_gate = torch.nn.Linear(width, width)
        self.src_update, self.dst_update = torch.nn.Linear(width, width), torch.nn.Linear(width, width)
        self.norm_nodes, self.norm_edges = norm_layer(width, normalization), norm_layer(width, normalization)

    def forward(self, nodes: torch.Tensor, edges: torch.Tensor, *, src: torch.Tensor, dst: torch.Tensor,
                weight: torch.Tensor, neighbour_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = self.src_gate(nodes)[src] + self.dst_gate(nodes)[dst] + self.edge_gate(edges)
        messages = (torch.sigmoid(gate) * weight.unsqueeze(-1)) * self.dst_update(nodes)[src]
        summed = torch.zeros_like(nodes).index_add(0, dst, messages) / neighbour_norm
        new_nodes = self.src_update(nodes) + summed
        nodes = nodes + torch.nn.functional.silu(self.norm_nodes(new_nodes))
        edges = edges + torch.nn.functional.silu(self.norm_edges(gate))
        return nodes, edges


class AlignnLayer(torch.nn.Module):
    """One ALIGNN layer: a convolution on the atom graph (atoms, bonds), then one on the line graph whose
    nodes are the updated bonds and whose edges are the angles."""

    def __init__(self, width: int, *, normalization: str):
        super().__init__()
        self.node_update = EdgeGatedGraphConv(width, normalization=normalization)
        self.edge_update = EdgeGatedGraphConv(width, normalization=normalization)

    def forward(self, atoms, bonds, angles, *, graph, bond_weight, angle_weight, bond_norm, angle_norm):
        atoms, bonds = self.node_update(atoms, bonds, src=graph.bond_i, dst=graph.bond_j, weight=bond_weight,
                                        neighbour_norm=bond_norm)
        bonds, angles = self.edge_update(bonds, angles, src=graph.triplet_src, dst=graph.triplet_dst,
                                         weight=angle_weight, neighbour_norm=angle_norm)
        return atoms, bonds, angles
