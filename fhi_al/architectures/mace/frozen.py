"""Faster MACE inference with frozen weights: the product basis weights are contracted into mace's coupling
tensors once, so each evaluation only contracts node features (per element, as batched matrix products).

Used for ensemble prediction copies only; exported files and training keep mace's own modules.
"""

from __future__ import annotations

import logging

import torch
from mace.modules.symmetric_contraction import Contraction

log = logging.getLogger(__name__)


class FrozenContraction(torch.nn.Module):
    """Same result as mace's `Contraction(x, y)` for fixed weights.

    mace computes sum_k U[..., i, k] W[e, k, c] for every atom; here T[e, c, ..., i] = sum_k U W is
    computed once per correlation order, and the atoms of each element contract their features with it.
    """

    def __init__(self, contraction: Contraction):
        super().__init__()
        correlation = contraction.correlation
        weights = [contraction.weights_max] + list(contraction.weights)  # orders correlation, ..., 1
        with torch.no_grad():
            for offset, weight in enumerate(weights):
                coupling = contraction.U_tensors(correlation - offset)
                tensor = torch.einsum("...k,ekc->ec...", coupling, weight.detach())
                self.register_buffer(f"coupled_{offset}", tensor.contiguous())
        self.orders = len(weights)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: node features [atoms, channels, ell]; y: one-hot elements [atoms, elements]."""
        elements = y.argmax(dim=-1)
        atoms, channels = x.shape[:2]
        first = self.coupled_0
        out_dims = tuple(first.shape[2:-1])  # after the first contraction
        result = x.new_zeros((atoms, channels) + tuple(first.shape[2:first.dim() - self.orders]))
        for element in torch.unique(elements).tolist():
            index = (elements == element).nonzero().squeeze(-1)
            features = x.index_select(0, index)  # [n, c, i]
            result.index_copy_(0, index, self._contract_element(element, features, out_dims))
        return result.reshape(atoms, -1)

    def _contract_element(self, element: int, features: torch.Tensor, out_dims: tuple[int, ...]) -> torch.Tensor:
        count, channels, ell = features.shape
        first = self.coupled_0[element].reshape(channels, -1, ell)  # [c, M, i]
        out = torch.bmm(first, features.permute(1, 2, 0))  # [c, M, n]
        out = out.permute(2, 0, 1).reshape((count, channels) + out_dims)
        for order in range(1, self.orders):
            coupled = getattr(self, f"coupled_{order}")[element]  # [c, ..., i]
            summed = coupled.unsqueeze(0) + out  # [n, c, ..., i]
            kept = summed.shape[2:-1]
            out = torch.bmm(summed.reshape(count * channels, -1, ell), features.reshape(count * channels, ell, 1))
            out = out.reshape((count, channels) + kept)
        return out


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
