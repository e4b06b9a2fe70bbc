"""The message part of a MACE interaction block (tensor product, aggregation, linear) for all ensemble members
at once, with features in a channel-major layout [..., channels, components].

e3nn stores irreps features as concatenated blocks and its generated code slices them apart per block; under
autograd every slice costs a zero-filled copy of the whole input in the backward pass, and under torch.vmap the
gathers of the aggregation become general (slow) gathers. Here the member axis is explicit and folded into the
rows, every gather and scatter runs along rows, and the tensor product is factorised: for each edge the spherical
harmonics are contracted with all Clebsch-Gordan couplings at once (a small matrix per edge, shared by all
channels) and one batched matrix product applies it to the sender's channels. The columns of that product are
ordered by the linear layer's output irreps, so the linear reads them without reordering, and its output is the
layout mace's symmetric contraction reads.

This is the one message passing of the stacked ensemble in torch (mace's own modules serve the member-wise
fallback). Where the optional C kernels (kernels/) are available and accept the inputs, `aggregate` hands the
same sums to one of them (one pass over the edges, channels innermost); the torch code below is the reference
it is tested against and the fallback.

Weights are passed in stacked over members; the plan holds only weight-independent structure (couplings, path
weights, orderings) taken from the block's e3nn modules, including their stored Wigner 3j values, so results agree
with e3nn's to float64 rounding.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3

from . import kernels

UVU = "uvu"


class InteractionPlan(torch.nn.Module):
    """Weight-independent structure of one mace interaction block's conv_tp and linear."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        tp, linear = block.conv_tp, block.linear
        self.channels = tp.irreps_in1[0].mul
        self.in_sizes = [mul_ir.dim for mul_ir in tp.irreps_in1]
        self.in_dims = [mul_ir.ir.dim for mul_ir in tp.irreps_in1]
        self.out_dims = [mul_ir.ir.dim for mul_ir in linear.irreps_out]
        in_offsets = _offsets(self.in_dims)
        sh_offsets = _offsets([mul_ir.ir.dim for mul_ir in tp.irreps_in2])
        weight_offsets = _offsets([ins.path_shape[0] * ins.path_shape[1] for ins in linear.instructions])
        # columns: for every linear output irrep, the tensor-product paths feeding it in weight order, each
        # path's 2 l + 1 components side by side
        self.groups: list[dict] = []
        column_paths: list[int] = []
        blocks = []
        for out, dim in enumerate(self.out_dims):
            feeding = [(i, ins) for i, ins in enumerate(linear.instructions) if ins.i_out == out]
            self.groups.append({"weights": [(weight_offsets[i], ins.path_weight) for i, ins in feeding],
                                "paths": len(feeding), "dim": dim})
            for _, ins in feeding:
                path = tp.instructions[ins.i_in]
                l1, l2 = tp.irreps_in1[path.i_in1].ir.l, tp.irreps_in2[path.i_in2].ir.l
                blocks.append((path.i_in1, path.i_in2, l1, l2, tp.irreps_out[path.i_out].ir.l, path.path_weight))
                column_paths += [ins.i_in] * dim
        components, columns = sum(self.in_dims), len(column_paths)
        coupling = torch.zeros(tp.irreps_in2.dim, components, columns, dtype=torch.float64)
        column = 0
        for i_in1, i_in2, l1, l2, l3, path_weight in blocks:
            w3j = _wigner_3j(tp, l1, l2, l3) * path_weight  # [i, j, k]
            a, j = in_offsets[i_in1], sh_offsets[i_in2]
            coupling[j:j + 2 * l2 + 1, a:a + 2 * l1 + 1, column:column + 2 * l3 + 1] = w3j.permute(1, 0, 2)
            column += 2 * l3 + 1
        dtype = linear.weight.dtype
        self.register_buffer("coupling", coupling.reshape(tp.irreps_in2.dim, -1).to(dtype))  # [sh, A C]
        expansion = torch.zeros(len(tp.instructions), columns, dtype=dtype)  # path weight -> its columns
        expansion[torch.tensor(column_paths), torch.arange(columns)] = 1.0
        self.register_buffer("expansion", expansion)
        self.register_buffer("column_path", torch.tensor(column_paths, dtype=torch.long))  # for the fused kernel
        self.components, self.columns, self.num_paths = components, columns, len(tp.instructions)

    @staticmethod
    def supports(block: torch.nn.Module) -> bool:
        tp, linear = getattr(block, "conv_tp", None), getattr(block, "linear", None)
        if tp is None or linear is None or not hasattr(tp, "instructions") or not hasattr(linear, "instructions"):
            return False
        muls = {mul_ir.mul for mul_ir in tp.irreps_in1} | {mul_ir.mul for mul_ir in linear.irreps_out}
        used = sorted(ins.i_in for ins in linear.instructions)
        return (len(muls) == 1 and all(mul_ir.mul == 1 for mul_ir in tp.irreps_in2)
                and all(ins.connection_mode == UVU and ins.has_weight for ins in tp.instructions)
                and [ins.i_out for ins in tp.instructions] == list(range(len(tp.irreps_out)))
                and used == list(range(len(tp.instructions)))
                and tp.irreps_out == linear.irreps_in and linear.bias.numel() == 0
                and not getattr(tp, "shared_weights", False))

    def aggregate(self, node_feats: torch.Tensor, edge_attrs: torch.Tensor, tp_weights: torch.Tensor,
                  edge_index: torch.Tensor) -> torch.Tensor:
        """Sum over incoming edges of conv_tp(node_feats[sender], edge_attrs, tp_weights) for every member.

        node_feats [M, nodes, irreps], edge_attrs [M, edges, sh], tp_weights [M, edges, paths u] ->
        [M nodes, u, columns]."""
        members, nodes = node_feats.shape[:2]
        edges = edge_attrs.shape[1]
        offsets = torch.arange(members, device=edge_index.device).unsqueeze(1) * nodes
        sender = (edge_index[0].unsqueeze(0) + offsets).reshape(-1)
        receiver = (edge_index[1].unsqueeze(0) + offsets).reshape(-1)
        per_edge = (edge_attrs.reshape(members * edges, -1) @ self.coupling).reshape(-1, self.components,
                                                                                    self.columns)
        blocks = torch.split(node_feats.reshape(members * nodes, -1), self.in_sizes, dim=-1)
        lib = kernels.kernels_for(node_feats)
        if lib is not None:  # the same sums in one C pass, channels innermost
            features = torch.cat([b.reshape(-1, self.channels, d).transpose(1, 2)
                                  for b, d in zip(blocks, self.in_dims)], dim=1)  # [M nodes, A, u]
            weights = tp_weights.reshape(members * edges, self.num_paths, self.channels)
            out = kernels.attempt(kernels.FusedMessages, features, per_edge, weights, self.column_path, sender,
                                  receiver, lib)
            if out is not None:
                return out.transpose(1, 2)  # [M nodes, u, columns]
        features = torch.cat([b.reshape(-1, self.channels, d) for b, d in zip(blocks, self.in_dims)], dim=-1)
        messages = torch.bmm(features.index_select(0, sender), per_edge)  # [M E, u, columns]
        weights = tp_weights.reshape(members * edges, self.num_paths, self.channels).transpose(1, 2)
        messages = messages * (weights @ self.expansion)
        out = messages.new_zeros((members * nodes,) + tuple(messages.shape[1:]))
        return out.index_add(0, receiver, messages)

    def linear(self, weight: torch.Tensor, messages: torch.Tensor) -> torch.Tensor:
        """The block's e3nn linear for every member: weight [M, numel], messages [M nodes, u, columns] ->
        [M, nodes, w, components] (mace's reshape layout: the output irreps' components side by side)."""
        members = weight.shape[0]
        nodes = messages.shape[0] // members
        u = self.channels
        sizes = [group["paths"] * group["dim"] for group in self.groups]
        outs = []
        for group, x in zip(self.groups, torch.split(messages, sizes, dim=-1)):
            w = torch.cat([weight[:, start:start + u * u].reshape(members, u, u) * path_weight
                           for start, path_weight in group["weights"]], dim=1)  # [M, (paths u), w]
            k = group["dim"]
            x = x.reshape(members, nodes, u, group["paths"], k).permute(0, 1, 4, 3, 2)
            x = x.reshape(members, nodes * k, group["paths"] * u)
            outs.append(torch.bmm(x, w).reshape(members, nodes, k, u).transpose(2, 3))  # [M, n, w, k]
        return torch.cat(outs, dim=-1)

    def irreps_layout(self, features: torch.Tensor) -> torch.Tensor:
        """[..., w, components] -> [..., irreps] (e3nn blocks), the inverse of mace's reshape."""
        blocks = torch.split(features, self.out_dims, dim=-1)
        return torch.cat([b.flatten(-2) for b in blocks], dim=-1)


def _wigner_3j(tp: torch.nn.Module, l1: int, l2: int, l3: int) -> torch.Tensor:
    """The coupling e3nn's generated code uses for this path, to the last bit: paths with a scalar input are
    special-cased there (identity / sqrt(2 l + 1)); the others use the w3j buffers stored in the module."""
    if l1 == 0 or l2 == 0:
        dim = 2 * l3 + 1
        eye = torch.eye(dim, dtype=torch.float64) / math.sqrt(dim)
        return eye.reshape(1, dim, dim) if l1 == 0 else eye.reshape(dim, 1, dim)
    stored = getattr(getattr(tp, "_compiled_main_left_right", None), f"_w3j_{l1}_{l2}_{l3}", None)
    return (stored if stored is not None else o3.wigner_3j(l1, l2, l3)).to(torch.float64)


def _offsets(sizes: list[int]) -> list[int]:
    out, total = [], 0
    for size in sizes:
        out.append(total)
        total += size
    return out
