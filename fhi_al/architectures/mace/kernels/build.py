"""Building and loading the optional C kernels (mace_kernels.c): compiled on first use, cached, typed ctypes.

The library is built with the C compiler `$CC` (default `cc`) into a per-user cache (`$FHI_AL_KERNEL_CACHE`,
default `~/.cache/fhi_al/kernels`), keyed by the source, the compiler and its exact flags, and written
atomically, so concurrent ranks and later runs reuse it. No `-march=native`: what it expands to is not in the
key, so a cache on a home directory shared by different CPUs could hand a node instructions it lacks (a crash,
not an exception). Instead the build names a fixed instruction-set level, `-march=x86-64-v3` (AVX2/FMA; as fast
as native here), only when this CPU reports every feature of that level, and the portable baseline otherwise;
the flag is part of the key, so a CPU without the level never loads that file. Every exported function has its
ctypes argument and return types declared. Without a working compiler, or with `FHI_AL_FUSED_KERNELS=0`,
`library` returns None and the callers use their torch code.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("mace_kernels.c")
FLAGS = ("-O3", "-fno-math-errno", "-fopenmp-simd", "-std=c99", "-shared", "-fPIC")
DTYPES = {torch.float64: ("double", "f64"), torch.float32: ("float", "f32")}
DISABLE_VARIABLE = "FHI_AL_FUSED_KERNELS"
CACHE_VARIABLE = "FHI_AL_KERNEL_CACHE"
COMPILE_TIMEOUT_S = 120
X86_64_V3 = ("-march=x86-64-v3",)
# /proc/cpuinfo names of the features the x86-64-v2 and -v3 levels of the x86-64 psABI require
X86_64_V3_FEATURES = frozenset({"cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2", "avx", "avx2",
                                "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})

_SIZE, _POINTER = ctypes.c_int64, ctypes.c_void_p
# (number of int64 sizes, number of pointers) of every function, in mace_kernels.c's argument order
SIGNATURES = {"messages_forward": (5, 7), "messages_backward": (5, 10),
              "contraction_forward": (6, 6), "contraction_backward": (6, 7)}


@dataclass(frozen=True)
class Kernels:
    """The typed entry points of one compiled library; `dtype` is the floating type it was built for."""

    dtype: torch.dtype
    path: Path
    messages_forward: ctypes._CFuncPtr
    messages_backward: ctypes._CFuncPtr
    contraction_forward: ctypes._CFuncPtr
    contraction_backward: ctypes._CFuncPtr


_libraries: dict[torch.dtype, Kernels | None] = {}


def enabled() -> bool:
    """False when FHI_AL_FUSED_KERNELS is 0/false/no/off (read at every call, so it can be switched at run time)."""
    return os.environ.get(DISABLE_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def library(dtype: torch.dtype) -> Kernels | None:
    """The compiled kernels for `dtype`, or None (disabled, unsupported dtype, or no working compiler)."""
    if not enabled() or dtype not in DTYPES:
        return None
    if dtype not in _libraries:
        _libraries[dtype] = _load(dtype)
    return _libraries[dtype]


def kernels_for(tensor: torch.Tensor) -> Kernels | None:
    """The kernels for a tensor's dtype if it lives in main memory (the kernels are CPU code), else None."""
    return library(tensor.dtype) if tensor.device.type == "cpu" else None


def _cache_dir() -> Path:
    configured = os.environ.get(CACHE_VARIABLE)
    return Path(configured) if configured else Path.home() / ".cache" / "fhi_al" / "kernels"


def cpu_level_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """`-march=x86-64-v3` if this x86-64 CPU reports every feature of that level, else () (portable build)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    try:
        line = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return ()
    return X86_64_V3 if X86_64_V3_FEATURES <= set(line.partition(":")[2].split()) else ()


def _load(dtype: torch.dtype) -> Kernels | None:
    real, suffix = DTYPES[dtype]
    compiler = os.environ.get("CC", "cc")
    base = FLAGS + (f"-DREAL={real}", f"-DSUFFIX={suffix}")
    level = cpu_level_flags()
    error: Exception | None = None
    for flags in ([base + level, base] if level else [base]):  # a compiler without the level: the baseline
        try:
            target = _built(compiler, flags, suffix)
            lib = ctypes.CDLL(str(target))
            functions = {name: _typed(getattr(lib, f"{name}_{suffix}"), *counts)
                         for name, counts in SIGNATURES.items()}
        except (OSError, AttributeError, subprocess.SubprocessError) as failure:
            error = failure
            continue
        log.debug("fused kernels for %s loaded from %s", dtype, target)
        return Kernels(dtype=dtype, path=target, **functions)
    log.warning("fused MACE kernels unavailable (%s); using the torch implementation", error)
    return None


def _built(compiler: str, flags: tuple[str, ...], suffix: str) -> Path:
    """The cached library for these exact flags, compiled first if missing."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, *flags, platform.machine(), platform.system()])
                         .encode()).hexdigest()[:16]
    target = _cache_dir() / f"mace_kernels_{suffix}_{key}.so"
    if not target.exists():
        _compile(compiler, flags, target)
    return target


def _typed(function: ctypes._CFuncPtr, sizes: int, pointers: int) -> ctypes._CFuncPtr:
    """Declare a kernel's C signature: `sizes` int64 scalars, then `pointers` data pointers; returns void."""
    function.argtypes = [_SIZE] * sizes + [_POINTER] * pointers
    function.restype = None
    return function


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
