"""All members of a MACE ensemble evaluated as one model: parameters stacked along a member axis, the dense
per-member layers vectorised over it with torch.func, the message passing (channel_major.py) and the symmetric
contractions (frozen.py) with the member axis folded into rows or channels; every member's forces by one backward.

This is the one ensemble-inference path; members that do not fit it (`stackable` is False) are evaluated one by
one through mace's own modules (Ensemble.predict).
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
from mace.modules.blocks import RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock
from mace.modules.models import ScaleShiftMACE

from . import kernels
from .channel_major import InteractionPlan
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
    if not all(isinstance(block, SUPPORTED_INTERACTIONS) and InteractionPlan.supports(block)
               for block in first.interactions):
        return False
    if any(not isinstance(c, FrozenContraction) for p in first.products for c in p.symmetric_contractions.contractions):
        return False
    if len(first.readouts) != len(first.interactions) or int(first.scale_shift.scale.numel()) != 1:
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
    forces [M, nodes, 3] for a mace batch (dict of AtomicData tensors), equal to each member's own output.

    Each member keeps its own copy of the positions so that one backward pass of the summed energies gives
    every member's forces. The dense layers (embeddings, radial MLPs, linears, readouts) run under torch.vmap
    over the stacked parameters; the message passing and the symmetric contractions (gathers that vmap would
    turn into slow general gathers) run outside it, with the member axis folded into rows or channels.
    """

    def __init__(self, models: Sequence[torch.nn.Module]):
        self.template = _MemberForward(copy.deepcopy(models[0]))
        self.size = len(models)
        states = [_state(model) for model in models]
        stacked: dict[str, torch.Tensor] = {}
        for name, tensor in states[0].items():
            if all(torch.equal(state[name], tensor) for state in states[1:]):
                continue  # identical in all members (mace's U matrices, masks, radial basis): not stacked
            stacked[f"model.{name}"] = torch.stack([state[name].detach() for state in states])
        first = models[0]
        self.contractions = []
        for i, product in enumerate(first.products):
            names = [f"products.{i}.symmetric_contractions.contractions.{j}.coefficients"
                     for j in range(len(product.symmetric_contractions.contractions))]
            # the kernels need every member's coefficients, also where all members share them
            self.contractions.append([
                _stacked_contraction(c, stacked.pop(f"model.{name}") if f"model.{name}" in stacked
                                     else torch.stack([state[name] for state in states]))
                for c, name in zip(product.symmetric_contractions.contractions, names)])
        self.stages = {"embed": _subset(stacked, ("node_embedding", "radial_embedding", "spherical_harmonics",
                                                   "atomic_energies_fn")),
                       "energy": _subset(stacked, ("scale_shift",))}
        for index in range(len(first.interactions)):
            self.stages[f"pre{index}"] = _subset(stacked, (f"interactions.{index}",))
            self.stages[f"post{index}"] = self.stages[f"pre{index}"]
            self.stages[f"product{index}"] = _subset(stacked, (f"products.{index}", f"readouts.{index}"))
        self.avg_num_neighbors = torch.tensor(
            [[float(block.avg_num_neighbors) for block in model.interactions] for model in models],
            dtype=first.r_max.dtype)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        positions = inputs["positions"].detach().expand(self.size, -1, -1).clone().requires_grad_(True)
        graph = _Graph(inputs)
        e0, node_feats, edge_attrs, edge_feats, cutoff = self._stage("embed", positions, graph)
        node_energies = []
        for index, contractions in enumerate(self.contractions):
            features, sc = self._interaction(index, node_feats, edge_attrs, edge_feats, cutoff, graph)
            contracted = torch.cat([contract_members(*contraction, features, graph.elements)
                                    for contraction in contractions], dim=-1)
            node_feats, node_energy = self._stage(f"product{index}", contracted, sc, graph)
            node_energies.append(node_energy)
        (interaction,) = self._stage("energy", torch.stack(node_energies, dim=-1), graph)
        (gradient,) = torch.autograd.grad(interaction.sum(), positions)
        return (e0 + interaction).detach(), -gradient

    def predict_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """__call__ for a batch of the MACE architecture (its AtomicData inputs)."""
        return self(batch.inputs.to_dict())

    def _interaction(self, index: int, node_feats, edge_attrs, edge_feats, cutoff, graph: "_Graph"):
        """Interaction block `index` of every member: channel-major features [M, atoms, c, ell] and the
        residual [M, atoms, ...] (or an empty tensor)."""
        plan = self.template.plans[index]
        avg_num_neighbors = self.avg_num_neighbors[:, index]
        node_feats, tp_weights, sc = self._stage(f"pre{index}", node_feats, edge_feats, cutoff, graph)
        aggregated = plan.aggregate(node_feats, edge_attrs, tp_weights, graph.edge_index)
        name = f"model.interactions.{index}.linear.weight"
        weight = self.stages[f"pre{index}"].get(name)
        if weight is None:  # the same in all members
            weight = self.template.model.interactions[index].linear.weight.expand(self.size, -1)
        features = plan.linear(weight, aggregated) / avg_num_neighbors.reshape(-1, 1, 1, 1)
        if self.template.residual[index]:
            return features, sc
        (features,) = self._stage(f"post{index}", plan.irreps_layout(features), graph)
        return features, sc

    def _stage(self, stage: str, *args):
        """One stage of every member's forward pass, vectorised over the member axis of tensor arguments."""
        in_dims = tuple(0 if isinstance(arg, torch.Tensor) else None for arg in args)

        def member(params, *member_args):
            return torch.func.functional_call(self.template, params, (stage,) + member_args, strict=False,
                                              tie_weights=False)

        return torch.vmap(member, in_dims=(0,) + in_dims)(self.stages[stage], *args)


def _stacked_contraction(contraction: FrozenContraction, coefficients: torch.Tensor):
    """(contraction, the members' coefficients [M, c, e * out, F], the same in the fused kernel's layout)."""
    return contraction, coefficients, contraction.channels_last(coefficients.flatten(0, 1))


def contract_members(contraction: FrozenContraction, coefficients: torch.Tensor, channels_last: torch.Tensor,
                     features: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
    """FrozenContraction of every member: features [M, atoms, c, ell], coefficients [M, c, e * out, F] (and
    `channels_last`, the same for the fused kernel) -> [M, atoms, c * out]."""
    members, atoms, channels, ell = features.shape
    lib = kernels.kernels_for(features)
    if lib is not None:  # members folded into the channels, which are innermost
        folded = features.permute(1, 3, 0, 2).reshape(atoms, ell, members * channels)
        out = contraction.contract_fused(folded, elements, channels_last, lib)  # [atoms, out, M c] or None
        if out is not None:
            return out.reshape(atoms, -1, members, channels).permute(2, 0, 3, 1).reshape(members, atoms, -1)
    folded = features.permute(0, 2, 3, 1).reshape(members * channels, ell, atoms)
    out = contraction.contract(folded, elements, coefficients.flatten(0, 1))  # [M c, out, atoms]
    return out.reshape(members, channels, -1, atoms).permute(0, 3, 1, 2).reshape(members, atoms, -1)


def _subset(stacked: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {name: t for name, t in stacked.items() if name.removeprefix("model.").startswith(prefixes)}


class _Graph:
    """The member-independent tensors of a mace batch."""

    def __init__(self, inputs: dict[str, torch.Tensor]):
        self.node_attrs = inputs["node_attrs"]
        self.elements = self.node_attrs.argmax(dim=-1)
        self.edge_index = inputs["edge_index"]
        self.shifts = inputs["shifts"]
        self.batch = inputs["batch"]
        self.num_graphs = int(inputs["ptr"].numel() - 1)
        self.num_nodes = int(self.node_attrs.shape[0])


class _MemberForward(torch.nn.Module):
    """The dense layers of ScaleShiftMACE.forward for one member, in stages (energies only; geometry from the
    member's own positions), without in-place updates so that torch.vmap can batch them over stacked member
    parameters. The message passing between `pre` and `post` is the plans' (outside vmap)."""

    def __init__(self, model: ScaleShiftMACE):
        super().__init__()
        self.model = model
        self.plans = torch.nn.ModuleList([InteractionPlan(block) for block in model.interactions])
        self.residual = [isinstance(block, RealAgnosticResidualInteractionBlock) for block in model.interactions]

    def forward(self, stage: str, *args):
        for prefix in ("pre", "post", "product"):
            if stage.startswith(prefix):
                return getattr(self, prefix)(int(stage.removeprefix(prefix)), *args)
        return getattr(self, stage)(*args)

    def embed(self, positions: torch.Tensor, graph: _Graph):
        model = self.model
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        vectors = positions[receiver] - positions[sender] + graph.shifts
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)
        node_e0 = model.atomic_energies_fn(graph.node_attrs)[:, 0]
        e0 = scatter_sum(node_e0, graph.batch, graph.num_graphs)
        edge_feats, cutoff = model.radial_embedding(lengths, graph.node_attrs, graph.edge_index,
                                                    model.atomic_numbers)
        if cutoff is None:
            cutoff = torch.ones_like(lengths)  # multiplying by 1 is exact
        return (e0, model.node_embedding(graph.node_attrs), model.spherical_harmonics(vectors), edge_feats,
                cutoff)

    def pre(self, index: int, node_feats, edge_feats, cutoff, graph: _Graph):
        """The per-member layers before the message passing: residual, linear_up, radial weights."""
        block = self.model.interactions[index]
        sc = block.skip_tp(node_feats, graph.node_attrs) if self.residual[index] else torch.zeros(())
        return block.linear_up(node_feats), block.conv_tp_weights(edge_feats) * cutoff, sc

    def post(self, index: int, message, graph: _Graph):
        """The element-dependent skip of a non-residual block, applied after the message passing."""
        block = self.model.interactions[index]
        return (block.reshape(block.skip_tp(message, graph.node_attrs)),)

    def product(self, index: int, contracted, sc, graph: _Graph):
        product = self.model.products[index]
        node_feats = product.linear(contracted)
        if product.use_sc and sc.dim() > 0:
            node_feats = node_feats + sc
        return node_feats, self.model.readouts[index](node_feats)[:, 0]

    def energy(self, node_energies, graph: _Graph):
        heads = torch.zeros_like(graph.batch)
        node_inter = self.model.scale_shift(node_energies.sum(dim=-1), heads)
        return (scatter_sum(node_inter, graph.batch, graph.num_graphs),)
