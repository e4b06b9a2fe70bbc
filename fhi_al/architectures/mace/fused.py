"""Fused C kernels for stacked MACE ensembles (kernels/mace_kernels.c), compiled on first use.

In torch the message passing of one interaction block materialises tensors of shape [members x edges,
channels, columns] (the messages, their radial weights, their gradients), and the frozen symmetric contraction
tensors of all monomials of every channel and atom; most of the time goes into moving them through memory.
The kernels compute the same sums edge by edge and atom block by atom block with the data in cache.

The library is built with the C compiler `$CC` (default `cc`) into a per-user cache
(`$FHI_AL_KERNEL_CACHE`, default `~/.cache/fhi_al/kernels`), keyed by the source, the flags and the CPU, and
written atomically, so concurrent ranks and later runs reuse it. Without a compiler, or with
`FHI_AL_FUSED_KERNELS=0`, the torch implementation is used (same results to rounding; slower). Inference
only: the kernels give first derivatives, which is what forces need.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "mace_kernels.c"
FUNCTIONS = ("messages_forward", "messages_backward", "contraction_forward", "contraction_backward")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-std=c99", "-shared", "-fPIC")
DTYPES = {torch.float64: ("double", "f64"), torch.float32: ("float", "f32")}
DISABLE_VARIABLE = "FHI_AL_FUSED_KERNELS"
COMPILE_TIMEOUT_S = 120

_libraries: dict[torch.dtype, ctypes.CDLL | None] = {}


def enabled() -> bool:
    return os.environ.get(DISABLE_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def library(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The compiled kernels for `dtype`, or None (disabled, unsupported dtype, or no working compiler)."""
    if not enabled() or dtype not in DTYPES:
        return None
    if dtype not in _libraries:
        _libraries[dtype] = _load(dtype)
    return _libraries[dtype]


def kernels_for(tensor: torch.Tensor) -> ctypes.CDLL | None:
    """The kernels for a tensor's dtype if it lives in main memory (the kernels are CPU code), else None."""
    return library(tensor.dtype) if tensor.device.type == "cpu" else None


def _cache_dir() -> Path:
    configured = os.environ.get("FHI_AL_KERNEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "fhi_al" / "kernels"


def _cpu_key() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next((line for line in lines if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def _load(dtype: torch.dtype) -> ctypes.CDLL | None:
    real, suffix = DTYPES[dtype]
    compiler = os.environ.get("CC", "cc")
    flags = FLAGS + (f"-DREAL={real}", f"-DSUFFIX={suffix}")
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, *flags, platform.machine(), _cpu_key()])
                         .encode()).hexdigest()[:16]
    target = _cache_dir() / f"mace_kernels_{suffix}_{key}.so"
    try:
        if not target.exists():
            _compile(compiler, flags, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("fused MACE kernels unavailable (%s); using the torch implementation", error)
        return None
    for name in FUNCTIONS:
        getattr(lib, f"{name}_{suffix}").restype = None
    log.debug("fused kernels for %s loaded from %s", dtype, target)
    return lib


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        try:
            subprocess.run([compiler, *flags, str(SOURCE), "-o", temporary], check=True, capture_output=True,
                           text=True, timeout=COMPILE_TIMEOUT_S)
        except subprocess.CalledProcessError as error:
            message = (error.stderr or "").strip().splitlines()
            raise OSError(f"{compiler} failed: {message[-1] if message else error}") from None
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)  # atomic: another rank may have written the same file meanwhile
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr() if tensor is not None else None)


class FusedMessages(torch.autograd.Function):
    """out[receiver, c, u] += w[e, path(c), u] * sum_a p[e, a, c] x[sender, a, u] over rows e (mace_kernels.c).

    x [nodes, A, U], p [rows, A, C], w [rows, paths, U], path [C] int64, sender/receiver [rows] int64 ->
    out [nodes, C, U]."""

    @staticmethod
    def forward(ctx, x, p, w, path, sender, receiver, lib):
        x, p, w = x.contiguous(), p.contiguous(), w.contiguous()
        out = x.new_zeros((x.shape[0], p.shape[2], x.shape[2]))
        suffix = DTYPES[x.dtype][1]
        getattr(lib, f"messages_forward_{suffix}")(*_sizes(x, p, w), _pointer(path), _pointer(x), _pointer(p),
                                                   _pointer(w), _pointer(sender), _pointer(receiver), _pointer(out))
        ctx.save_for_backward(x, p, w, path, sender, receiver)
        ctx.lib = lib
        return out

    @staticmethod
    @once_differentiable  # first derivatives only (forces); a second derivative raises instead of being wrong
    def backward(ctx, grad):
        x, p, w, path, sender, receiver = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_p, need_w = ctx.needs_input_grad[:3]
        gx = torch.zeros_like(x) if need_x else None
        gp = torch.empty_like(p) if need_p else None
        gw = torch.empty_like(w) if need_w else None
        suffix = DTYPES[x.dtype][1]
        getattr(ctx.lib, f"messages_backward_{suffix}")(
            *_sizes(x, p, w), _pointer(path), _pointer(x), _pointer(p), _pointer(w), _pointer(sender),
            _pointer(receiver), _pointer(grad), _pointer(gx), _pointer(gp), _pointer(gw))
        return gx, gp, gw, None, None, None, None


def _sizes(x: torch.Tensor, p: torch.Tensor, w: torch.Tensor) -> tuple[ctypes.c_int64, ...]:
    rows, components, columns = p.shape
    return tuple(ctypes.c_int64(n) for n in (rows, x.shape[2], components, columns, w.shape[1]))


class FusedContraction(torch.autograd.Function):
    """out[j, o, c] = sum_F coefficients[element(j), o, F, c] prod_t x[j, monomials[t, F], c]
    (frozen.FrozenContraction in a channels-last layout; x carries a last row of ones).

    x [atoms, L, channels], elements [atoms] int64, coefficients [elements, O, F, channels] (constant),
    monomials [K, F] int64 -> out [atoms, O, channels]."""

    @staticmethod
    def forward(ctx, x, elements, coefficients, monomials, lib):
        x = x.contiguous()
        elements = elements.contiguous()
        order = torch.argsort(elements, stable=True)  # atoms of one element in a row: coefficients stay cached
        out = x.new_empty((x.shape[0], coefficients.shape[1], x.shape[2]))
        ctx.sizes = _contraction_sizes(x, monomials, coefficients)
        getattr(lib, f"contraction_forward_{DTYPES[x.dtype][1]}")(
            *ctx.sizes, _pointer(monomials), _pointer(order), _pointer(elements), _pointer(x),
            _pointer(coefficients), _pointer(out))
        ctx.save_for_backward(x, coefficients, monomials, order, elements)
        ctx.lib = lib
        return out

    @staticmethod
    @once_differentiable  # first derivatives only (forces); a second derivative raises instead of being wrong
    def backward(ctx, grad):
        x, coefficients, monomials, order, elements = ctx.saved_tensors
        grad = grad.contiguous()
        gx = torch.empty_like(x)
        getattr(ctx.lib, f"contraction_backward_{DTYPES[x.dtype][1]}")(
            *ctx.sizes, _pointer(monomials), _pointer(order), _pointer(elements), _pointer(x),
            _pointer(coefficients), _pointer(grad), _pointer(gx))
        return gx, None, None, None, None


def _contraction_sizes(x: torch.Tensor, monomials: torch.Tensor,
                       coefficients: torch.Tensor) -> tuple[ctypes.c_int64, ...]:
    atoms, rows, channels = x.shape
    order, count = monomials.shape
    return tuple(ctypes.c_int64(n) for n in (channels, rows, atoms, order, count, coefficients.shape[1]))
