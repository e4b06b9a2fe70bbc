"""The C kernels as torch autograd functions, with every input checked before the C code sees it.

C indexes raw memory: a wrong shape, dtype or index would read or write outside the tensors instead of failing.
So before each call the shapes, dtypes, device and index ranges (senders and receivers within the nodes, paths,
species and monomial indices within their tables) are checked; any mismatch raises KernelInputError before the
kernel runs, and `attempt` turns that into None so that the caller runs its torch code instead (logged once per
reason). Non-contiguous inputs are copied to contiguous ones. Inference only: the kernels give first
derivatives, which is what forces need; a second derivative raises.
"""

from __future__ import annotations

import logging

import torch
from torch.autograd.function import once_differentiable

from .build import Kernels

log = logging.getLogger(__name__)

MAX_LANES = 8192  # channels handled in one kernel loop; the C code keeps per-channel scratch rows on its stack

_reported: set[str] = set()


class KernelInputError(ValueError):
    """Inputs the C kernels cannot take safely (shape, dtype, device or an index out of range)."""


def attempt(function: type[torch.autograd.Function], *args) -> torch.Tensor | None:
    """`function.apply(*args)`, or None if the inputs were refused (the caller then uses torch)."""
    try:
        return function.apply(*args)
    except KernelInputError as error:
        reason = str(error)
        if reason not in _reported:
            _reported.add(reason)
            log.warning("fused MACE kernel refused its inputs (%s); using the torch implementation", reason)
        return None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise KernelInputError(message)


def _values(name: str, tensor, kernels: Kernels, shape: tuple[int | None, ...]) -> torch.Tensor:
    """A floating input of the kernels' dtype in main memory with `shape` (None: any size), made contiguous."""
    _require(isinstance(tensor, torch.Tensor), f"{name} is not a tensor")
    _require(tensor.device.type == "cpu", f"{name} is on {tensor.device}, the kernels run on the CPU")
    _require(tensor.dtype == kernels.dtype, f"{name} is {tensor.dtype}, the kernels were built for {kernels.dtype}")
    _require(tensor.dim() == len(shape) and all(want is None or got == want for got, want in zip(tensor.shape, shape)),
             f"{name} has shape {tuple(tensor.shape)}, expected {tuple('*' if s is None else s for s in shape)}")
    return tensor.contiguous()


def _indices(name: str, tensor, count: int, upper: int) -> torch.Tensor:
    """A 1-d int64 index tensor of `count` entries, each in [0, upper), made contiguous."""
    _require(isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu", f"{name} is not a CPU tensor")
    _require(tensor.dtype == torch.int64, f"{name} is {tensor.dtype}, expected torch.int64")
    _require(tensor.dim() == 1 and tensor.numel() == count, f"{name} has shape {tuple(tensor.shape)}, "
                                                             f"expected ({count},)")
    if count:
        low, high = int(tensor.min()), int(tensor.max())
        _require(low >= 0 and high < upper, f"{name} holds indices in [{low}, {high}], outside [0, {upper})")
    return tensor.contiguous()


def _lanes(name: str, count: int) -> None:
    _require(0 < count <= MAX_LANES, f"{name} = {count} channels, the kernels take 1 to {MAX_LANES}")


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return tensor.data_ptr() if tensor is not None else None


class FusedMessages(torch.autograd.Function):
    """out[receiver, c, u] += w[e, path(c), u] * sum_a p[e, a, c] x[sender, a, u] over rows e (mace_kernels.c).

    x [nodes, A, U], p [rows, A, C], w [rows, paths, U], path [C] int64 in [0, paths), sender/receiver [rows]
    int64 in [0, nodes) -> out [nodes, C, U]."""

    @staticmethod
    def forward(ctx, x, p, w, path, sender, receiver, kernels: Kernels):
        x = _values("x", x, kernels, (None, None, None))
        nodes, components, channels = x.shape
        _lanes("U", channels)
        p = _values("p", p, kernels, (None, components, None))
        rows, _, columns = p.shape
        w = _values("w", w, kernels, (rows, None, channels))
        paths = w.shape[1]
        path = _indices("path", path, columns, paths)
        sender = _indices("sender", sender, rows, nodes)
        receiver = _indices("receiver", receiver, rows, nodes)
        out = x.new_zeros((nodes, columns, channels))
        ctx.sizes = (rows, channels, components, columns, paths)
        kernels.messages_forward(*ctx.sizes, _pointer(path), _pointer(x), _pointer(p), _pointer(w),
                                 _pointer(sender), _pointer(receiver), _pointer(out))
        ctx.save_for_backward(x, p, w, path, sender, receiver)
        ctx.kernels = kernels
        return out

    @staticmethod
    @once_differentiable  # first derivatives only (forces); a second derivative raises instead of being wrong
    def backward(ctx, grad):
        x, p, w, path, sender, receiver = ctx.saved_tensors
        grad = _values("grad", grad, ctx.kernels, (x.shape[0], p.shape[2], x.shape[2]))
        need_x, need_p, need_w = ctx.needs_input_grad[:3]
        gx = torch.zeros_like(x) if need_x else None
        gp = torch.empty_like(p) if need_p else None
        gw = torch.empty_like(w) if need_w else None
        ctx.kernels.messages_backward(*ctx.sizes, _pointer(path), _pointer(x), _pointer(p), _pointer(w),
                                      _pointer(sender), _pointer(receiver), _pointer(grad), _pointer(gx),
                                      _pointer(gp), _pointer(gw))
        return gx, gp, gw, None, None, None, None


class FusedContraction(torch.autograd.Function):
    """out[j, o, c] = sum_F coefficients[element(j), o, F, c] prod_t x[j, monomials[t, F], c]
    (frozen.FrozenContraction in a channels-last layout; x carries a last row of ones).

    x [atoms, L, channels], elements [atoms] int64 in [0, species), coefficients [species, O, F, channels]
    (constant), monomials [K, F] int64 in [0, L) -> out [atoms, O, channels]."""

    @staticmethod
    def forward(ctx, x, elements, coefficients, monomials, kernels: Kernels):
        x = _values("x", x, kernels, (None, None, None))
        atoms, rows, channels = x.shape
        _lanes("channels", channels)
        coefficients = _values("coefficients", coefficients, kernels, (None, None, None, channels))
        species, outputs, count, _ = coefficients.shape
        _require(isinstance(monomials, torch.Tensor) and monomials.dim() == 2 and monomials.shape[1] == count,
                 f"monomials must have shape (K, {count})")
        order = monomials.shape[0]
        _require(order >= 1, "monomials must have at least one row (the correlation order)")
        monomials = _indices("monomials", monomials.reshape(-1), order * count, rows).reshape(order, count)
        elements = _indices("elements", elements, atoms, species)
        visit = torch.argsort(elements, stable=True)  # atoms of one element in a row: coefficients stay cached
        out = x.new_empty((atoms, outputs, channels))
        ctx.sizes = (channels, rows, atoms, order, count, outputs)
        kernels.contraction_forward(*ctx.sizes, _pointer(monomials), _pointer(visit), _pointer(elements),
                                    _pointer(x), _pointer(coefficients), _pointer(out))
        ctx.save_for_backward(x, coefficients, monomials, visit, elements)
        ctx.kernels = kernels
        return out

    @staticmethod
    @once_differentiable  # first derivatives only (forces); a second derivative raises instead of being wrong
    def backward(ctx, grad):
        x, coefficients, monomials, visit, elements = ctx.saved_tensors
        grad = _values("grad", grad, ctx.kernels, (x.shape[0], coefficients.shape[1], x.shape[2]))
        gx = torch.empty_like(x)
        ctx.kernels.contraction_backward(*ctx.sizes, _pointer(monomials), _pointer(visit), _pointer(elements),
                                         _pointer(x), _pointer(coefficients), _pointer(grad), _pointer(gx))
        return gx, None, None, None, None
