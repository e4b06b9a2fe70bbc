"""Faster MACE inference with frozen weights: the product-basis weights are contracted into mace's coupling
tensors once, and each evaluation contracts node features with them as a few dense batched matrix products.

Used for ensemble prediction copies only; exported files and training keep mace's own modules.
"""

from __future__ import annotations

import logging
import math

import torch
from mace.modules.symmetric_contraction import Contraction

log = logging.getLogger(__name__)


class FrozenContraction(torch.nn.Module):
    """Same result as mace's `Contraction(x, y)` for fixed weights.

    mace evaluates ((T_3 x + T_2) x + T_1) x with T_nu = sum_k U_nu[..., k] W_nu[e, k, c] recomputed for every
    atom and a large per-atom intermediate. Expanded, the result is sum_nu T_nu . x^(x)nu; here the T_nu are
    computed once and, per element, the terms of order >= 2 are matrix products of T_nu (rows: output
    component and first ell index) with outer powers of the features, followed by one contraction with x.
    """

    def __init__(self, contraction: Contraction):
        super().__init__()
        correlation = contraction.correlation
        weights = [contraction.weights_max] + list(contraction.weights)  # orders correlation, ..., 1
        with torch.no_grad():
            for offset, weight in enumerate(weights):
                order = correlation - offset
                coupled = torch.einsum("...k,ekc->ec...", contraction.U_tensors(order), weight.detach())
                elements, channels = coupled.shape[:2]
                self.ell = coupled.shape[-1]
                self.out_dims = tuple(coupled.shape[2:coupled.dim() - order])
                rows = math.prod(self.out_dims) * self.ell
                self.register_buffer(f"coupled_{order}",
                                     coupled.reshape(elements, channels, rows, self.ell ** (order - 1)).contiguous())
        self.correlation = correlation

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: node features [atoms, channels, ell]; y: one-hot elements [atoms, elements].
        Out of place (atoms grouped by element, then put back in order) so that torch.vmap can batch it."""
        elements = y.argmax(dim=-1)
        atoms = x.shape[0]
        parts, indices = [], []
        for element in torch.unique(elements).tolist():
            index = (elements == element).nonzero().squeeze(-1)
            parts.append(self._contract_element(element, x.index_select(0, index)))
            indices.append(index)
        order = torch.cat(indices)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(atoms, device=order.device)
        return torch.cat(parts).index_select(0, inverse).reshape(atoms, -1)

    def _contract_element(self, element: int, features: torch.Tensor) -> torch.Tensor:
        count, channels, ell = features.shape
        x = features.permute(1, 2, 0)  # [c, ell, n]
        rows = self.coupled_1[element]  # [c, rows, 1]: first order, no power of x
        power = x
        for order in range(2, self.correlation + 1):
            rows = rows + torch.bmm(getattr(self, f"coupled_{order}")[element], power)  # [c, rows, n]
            if order < self.correlation:
                power = (power.unsqueeze(2) * x.unsqueeze(1)).reshape(channels, -1, count)
        rows = rows.reshape(channels, -1, ell, rows.shape[-1])  # [c, out, ell, n or 1]
        out = (rows * x.unsqueeze(1)).sum(dim=2)  # [c, out, n]
        return out.permute(2, 0, 1).reshape((count, channels) + self.out_dims)


def freeze_contractions(model: torch.nn.Module) -> int:
    """Replace every mace Contraction of `model` (an inference copy) by a FrozenContraction; returns count."""
    replaced = 0
    for module in list(model.modules()):
        children = getattr(module, "contractions", None)
        if isinstance(children, torch.nn.ModuleList):
            for index, child in enumerate(children):
                if isinstance(child, Contraction):
                    children[index] = FrozenContraction(child)
                    replaced += 1
    return replaced
