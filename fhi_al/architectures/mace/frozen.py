"""Faster MACE inference with frozen weights: the product-basis weights are contracted into mace's coupling
tensors once, symmetrised onto the monomials of the features that the coupling allows, and each evaluation is
a gather-product of the features and one batched matrix product. Where the optional C kernels (kernels/) are
available and accept the inputs, the same polynomial is evaluated by one of them, atom by atom with the channels
innermost.

Used for ensemble prediction copies only; exported files and training keep mace's own modules.
"""

from __future__ import annotations

import itertools
import logging

import torch
from mace.modules.symmetric_contraction import Contraction

from . import kernels

log = logging.getLogger(__name__)

CHUNK_BYTES = 2**21  # monomials of at most this size are built at a time (fits in a core's cache)


class FrozenContraction(torch.nn.Module):
    """Same result as mace's `Contraction(x, y)` for fixed weights.

    mace evaluates ((T_3 x + T_2) x + T_1) x with T_nu = sum_k U_nu[..., k] W_nu[e, k, c] recomputed for every
    atom. Expanded, the result is sum_nu T_nu . x^(x)nu, a polynomial in the features of each channel: here the
    T_nu are computed once and symmetrised onto the monomials x_i1 ... x_inu (i1 <= ... <= inu) that the
    coupling (mace's U tensors, independent of the weights) allows, so each evaluation is one gather-product
    of the features and one batched matrix product with the coefficients of all elements.
    """

    def __init__(self, contraction: Contraction):
        super().__init__()
        correlation = contraction.correlation
        weights = [contraction.weights_max] + list(contraction.weights)  # orders correlation, ..., 1
        columns, blocks = [], []
        with torch.no_grad():
            for offset, weight in enumerate(weights):
                order = correlation - offset
                coupling = contraction.U_tensors(order)  # [out..., ell x order, k]
                self.ell = coupling.shape[-2]
                self.out_dims = tuple(coupling.shape[:coupling.dim() - order - 1])
                tuples, key = _sorted_tuples(self.ell, order)
                # monomials the coupling allows (structural: the same for any weights)
                allowed = _symmetrise(coupling.reshape(-1, self.ell ** order, coupling.shape[-1]).transpose(1, 2),
                                      key, len(tuples)).ne(0).flatten(0, 1).any(0).nonzero().squeeze(-1)
                coupled = torch.einsum("...k,ekc->ec...", coupling, weight.detach())  # [e, c, out..., ell x order]
                elements, channels = coupled.shape[:2]
                coupled = _symmetrise(coupled.reshape(elements, channels, -1, self.ell ** order), key, len(tuples))
                blocks.append(coupled.index_select(-1, allowed))  # [e, c, out, F_nu]
                padded = [t + (self.ell,) * (correlation - order) for t in tuples]  # index ell: a factor 1
                columns.append(torch.tensor(padded, dtype=torch.long).index_select(0, allowed))
        coefficients = torch.cat(blocks, dim=-1)  # [e, c, out, F]
        elements, channels, outputs, _ = coefficients.shape
        # [c, e * out, F]: one batched product over channels gives every element's output
        self.register_buffer("coefficients", coefficients.permute(1, 0, 2, 3).reshape(channels, elements * outputs,
                                                                                        -1).contiguous())
        self.register_buffer("monomials", torch.cat(columns).T.contiguous())  # [correlation, F]
        self.num_elements, self.num_outputs = elements, outputs
        self.register_buffer("coefficients_channels_last", self.channels_last(self.coefficients), persistent=False)
        self.correlation = correlation

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: node features [atoms, channels, ell]; y: one-hot elements [atoms, elements]."""
        atoms = x.shape[0]
        lib = kernels.kernels_for(x)
        if lib is not None:
            out = self.contract_fused(x.transpose(1, 2), y.argmax(dim=-1), self.coefficients_channels_last, lib)
            if out is not None:
                return out.transpose(1, 2).reshape(atoms, -1)
        out = self.contract(x.permute(1, 2, 0), y.argmax(dim=-1), self.coefficients)  # [c, out, atoms]
        return out.permute(2, 0, 1).reshape(atoms, -1)

    def channels_last(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Coefficients [c, e * out, F] (this module's, or several members' stacked along c) in the layout of the
        fused kernel: [e, out, F, c]."""
        shape = (coefficients.shape[0], self.num_elements, self.num_outputs, -1)
        return coefficients.reshape(shape).permute(1, 2, 3, 0).contiguous()

    def contract_fused(self, features: torch.Tensor, elements: torch.Tensor, coefficients: torch.Tensor,
                       lib: kernels.Kernels) -> torch.Tensor | None:
        """`contract` by the fused kernel in a channels-last layout: features [atoms, ell, c], elements [atoms],
        coefficients [e, out, F, c] (see channels_last) -> [atoms, out, c]; None if the kernel refused the
        inputs (the caller then uses `contract`)."""
        atoms, _, channels = features.shape
        extended = torch.cat([features, features.new_ones((atoms, 1, channels))], dim=1)  # the factor 1
        return kernels.attempt(kernels.FusedContraction, extended, elements, coefficients, self.monomials, lib)

    def contract(self, features: torch.Tensor, elements: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """features [c, ell, atoms] (atoms last: the gathers copy whole rows), elements [atoms] (indices),
        coefficients [c, e * out, F] (this module's, or several members' stacked along c) -> [c, out, atoms]."""
        channels, _, atoms = features.shape
        chunk = max(1, CHUNK_BYTES // (features.element_size() * atoms * self.monomials.shape[1]))
        if channels > chunk:  # large batches: channel chunks keep the monomials in cache
            return torch.cat([self.contract(features[start:start + chunk], elements,
                                            coefficients[start:start + chunk])
                              for start in range(0, channels, chunk)])
        extended = torch.cat([features, features.new_ones((channels, 1, atoms))], dim=1)
        monomials = extended.index_select(1, self.monomials[0])
        for factor in range(1, self.correlation):
            monomials = monomials * extended.index_select(1, self.monomials[factor])  # [c, F, atoms]
        every = torch.bmm(coefficients, monomials).reshape(channels, self.num_elements, self.num_outputs, atoms)
        index = elements.reshape(1, 1, 1, atoms).expand(channels, 1, self.num_outputs, atoms)
        return every.gather(1, index).squeeze(1)


def _sorted_tuples(ell: int, order: int) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Non-decreasing index tuples of length `order` and, for every tuple of range(ell)^order, its number."""
    tuples = list(itertools.combinations_with_replacement(range(ell), order))
    number = {t: n for n, t in enumerate(tuples)}
    key = [number[tuple(sorted(t))] for t in itertools.product(range(ell), repeat=order)]
    return tuples, torch.tensor(key, dtype=torch.long)


def _symmetrise(tensor: torch.Tensor, key: torch.Tensor, count: int) -> torch.Tensor:
    """Sum the last axis (all index tuples) onto the sorted tuples numbered by `key`."""
    return tensor.new_zeros(tensor.shape[:-1] + (count,)).index_add_(-1, key, tensor)


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
