"""All members of a MACE ensemble evaluated as one model: parameters stacked along a member axis and the
forward pass vectorised over it with torch.func (one set of operations for M members), forces by one backward.

Members must share the architecture (irreps, correlation, species, radial basis); otherwise use one call each.
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
from mace.modules.blocks import RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock
from mace.modules.models import ScaleShiftMACE

from .frozen import FrozenContraction

log = logging.getLogger(__name__)

SUPPORTED_INTERACTIONS = (RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum of the rows of `src` into `dim_size` rows by `index`; out of place, so torch.vmap can batch it."""
    return src.new_zeros((dim_size,) + tuple(src.shape[1:])).index_add(0, index, src)


def stackable(models: Sequence[torch.nn.Module]) -> bool:
    """Whether `models` can be evaluated as one stacked model: same structure, shapes and supported blocks."""
    first = models[0]
    if type(first) is not ScaleShiftMACE or any(type(m) is not type(first) for m in models):
        return False
    if not all(isinstance(block, SUPPORTED_INTERACTIONS) for block in first.interactions):
        return False
    if any(not isinstance(c, FrozenContraction) for p in first.products for c in p.symmetric_contractions.contractions):
        return False
    if hasattr(first, "pair_repulsion") or hasattr(first, "joint_embedding"):
        return False
    reference = {name: (t.shape, t.dtype) for name, t in _state(first).items()}
    for model in models[1:]:
        state = _state(model)
        if {name: (t.shape, t.dtype) for name, t in state.items()} != reference:
            return False
        if [type(b) for b in model.interactions] != [type(b) for b in first.interactions]:
            return False
        if not torch.equal(model.atomic_numbers, first.atomic_numbers) or float(model.r_max) != float(first.r_max):
            return False
    return True


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(list(model.named_parameters()) + list(model.named_buffers()))


class StackedMace:
    """M frozen MACE prediction copies evaluated together; `__call__(inputs)` -> energies [M, graphs] and
    forces [M, nodes, 3] for a mace batch (dict of AtomicData tensors), equal to each member's own output."""

    def __init__(self, models: Sequence[torch.nn.Module]):
        self.template = _MemberForward(copy.deepcopy(models[0]))
        states = [_state(model) for model in models]
        self.stacked: dict[str, torch.Tensor] = {}
        for name, tensor in states[0].items():
            if all(torch.equal(state[name], tensor) for state in states[1:]):
                continue  # identical in all members (mace's U matrices, masks, radial basis): not stacked
            self.stacked[f"model.{name}"] = torch.stack([state[name].detach() for state in states])
        self.avg_num_neighbors = torch.tensor(
            [[float(block.avg_num_neighbors) for block in model.interactions] for model in models],
            dtype=torch.get_default_dtype() if not states[0] else next(iter(states[0].values())).dtype)
        self.size = len(models)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        positions = inputs["positions"].detach().expand(self.size, -1, -1).clone().requires_grad_(True)
        graph = _Graph(inputs)

        def member(stacked, positions_m, avg_num_neighbors):
            return torch.func.functional_call(self.template, stacked, (positions_m, avg_num_neighbors, graph),
                                              strict=False, tie_weights=False)

        e0, interaction = torch.vmap(member, in_dims=(0, 0, 0))(self.stacked, positions, self.avg_num_neighbors)
        (gradient,) = torch.autograd.grad(interaction.sum(), positions)
        return (e0 + interaction).detach(), -gradient


class _Graph:
    """The member-independent tensors of a mace batch."""

    def __init__(self, inputs: dict[str, torch.Tensor]):
        self.node_attrs = inputs["node_attrs"]
        self.edge_index = inputs["edge_index"]
        self.shifts = inputs["shifts"]
        self.batch = inputs["batch"]
        self.num_graphs = int(inputs["ptr"].numel() - 1)
        self.num_nodes = int(self.node_attrs.shape[0])


class _MemberForward(torch.nn.Module):
    """ScaleShiftMACE.forward of one member (energies only; geometry from the member's own positions) written
    without in-place updates so that torch.vmap can batch it over stacked member parameters."""

    def __init__(self, model: ScaleShiftMACE):
        super().__init__()
        self.model = model

    def forward(self, positions: torch.Tensor, avg_num_neighbors: torch.Tensor,
                graph: _Graph) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        vectors = positions[receiver] - positions[sender] + graph.shifts
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)
        node_e0 = model.atomic_energies_fn(graph.node_attrs)[:, 0]
        e0 = scatter_sum(node_e0, graph.batch, graph.num_graphs)
        node_feats = model.node_embedding(graph.node_attrs)
        edge_attrs = model.spherical_harmonics(vectors)
        edge_feats, cutoff = model.radial_embedding(lengths, graph.node_attrs, graph.edge_index,
                                                    model.atomic_numbers)
        node_energies = []
        for index, (interaction, product, readout) in enumerate(
                zip(model.interactions, model.products, model.readouts)):
            sc = None
            if isinstance(interaction, RealAgnosticResidualInteractionBlock):
                sc = interaction.skip_tp(node_feats, graph.node_attrs)
            node_feats = interaction.linear_up(node_feats)
            tp_weights = interaction.conv_tp_weights(edge_feats)
            if cutoff is not None:
                tp_weights = tp_weights * cutoff
            messages = interaction.conv_tp(node_feats[sender], edge_attrs, tp_weights)
            message = scatter_sum(messages, receiver, graph.num_nodes)
            message = interaction.linear(message) / avg_num_neighbors[index]
            if sc is None:
                message = interaction.skip_tp(message, graph.node_attrs)
            node_feats = product(node_feats=interaction.reshape(message), sc=sc, node_attrs=graph.node_attrs)
            node_energies.append(readout(node_feats)[:, 0])
        heads = torch.zeros_like(graph.batch)
        node_inter = model.scale_shift(torch.stack(node_energies).sum(dim=0), heads)
        return e0, scatter_sum(node_inter, graph.batch, graph.num_graphs)
