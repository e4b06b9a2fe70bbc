"""The fused C kernels of stacked MACE ensembles: against plain torch sums, mace's own symmetric contraction and
finite differences, in float64 and float32; compiled once and cached; a missing compiler falls back to torch;
typed ctypes entry points; inputs checked (shapes, dtypes, index ranges) before the C code runs."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import subprocess
from pathlib import Path

import mace  # noqa: F401  (before e3nn)
import pytest
import torch
from e3nn import o3
from mace.modules.symmetric_contraction import SymmetricContraction

from fhi_al.architectures.mace import kernels
from fhi_al.architectures.mace.kernels import build, checked
from fhi_al.architectures.mace.frozen import FrozenContraction

TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def message_inputs(dtype, seed=0):
    """A random graph of 2 members x 6 nodes (nodes 5 and 11 have no incoming edge, 5 sends one), 3 components,
    7 columns of 4 paths."""
    generator = torch.Generator().manual_seed(seed)
    nodes, channels, components, paths = 12, 5, 3, 4
    sender = torch.tensor([0, 1, 2, 3, 4, 0, 2, 5, 6, 7, 8, 9, 10, 6, 11])
    receiver = torch.tensor([1, 2, 3, 4, 0, 2, 0, 1, 7, 8, 9, 10, 6, 8, 7])
    column_path = torch.tensor([0, 1, 1, 1, 2, 3, 3])

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype, requires_grad=True)

    x, p, w = rand(nodes, components, channels), rand(len(sender), components, 7), rand(len(sender), paths, channels)
    return x, p, w, column_path, sender, receiver


def messages_in_torch(x, p, w, column_path, sender, receiver):
    per_edge = torch.einsum("eac,eau->ecu", p, x[sender]) * w[:, column_path, :]
    return torch.zeros(x.shape[0], p.shape[2], x.shape[2], dtype=x.dtype).index_add(0, receiver, per_edge)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_message_kernel_matches_torch_sums(dtype):
    lib = kernels.library(dtype)
    assert lib is not None  # a C compiler is part of the test environment (the ASI tests need one too)
    x, p, w, path, sender, receiver = message_inputs(dtype)
    expected = messages_in_torch(x, p, w, path, sender, receiver)
    result = kernels.FusedMessages.apply(x, p, w, path, sender, receiver, lib)
    torch.testing.assert_close(result, expected, **TOLERANCE[dtype])
    assert torch.all(result[5] == 0) and torch.all(result[11] == 0) and result[1].abs().min() > 0
    weights = torch.randn_like(expected)
    grads = torch.autograd.grad((result * weights).sum(), (x, p, w))
    reference = torch.autograd.grad((expected * weights).sum(), (x, p, w))
    for got, want in zip(grads, reference):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])


def test_message_kernel_gradients_by_finite_differences():
    x, p, w, path, sender, receiver = message_inputs(torch.float64, seed=3)
    lib = kernels.library(torch.float64)
    assert torch.autograd.gradcheck(lambda *t: kernels.FusedMessages.apply(*t, path, sender, receiver, lib), (x, p, w))


def test_message_kernel_skips_gradients_not_needed():
    x, p, w, path, sender, receiver = message_inputs(torch.float64)
    x = x.detach()  # e.g. the element embedding entering the first interaction
    out = kernels.FusedMessages.apply(x, p, w, path, sender, receiver, kernels.library(torch.float64))
    grad_p, grad_w = torch.autograd.grad(out.sum(), (p, w))
    reference = torch.autograd.grad(messages_in_torch(x, p, w, path, sender, receiver).sum(), (p, w))
    torch.testing.assert_close(grad_p, reference[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_w, reference[1], rtol=1e-12, atol=1e-12)


def mace_contraction(correlation: int, dtype):
    """mace's symmetric contraction of 4x0e + 4x1o features for 3 elements, with random weights."""
    torch.manual_seed(correlation)
    with torch.no_grad():
        module = SymmetricContraction(o3.Irreps("4x0e+4x1o"), o3.Irreps("4x0e+4x1o"), correlation=correlation,
                                      num_elements=3)
        for parameter in module.parameters():
            parameter.normal_()
    return module.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_contraction_kernel_reproduces_mace(dtype, correlation):
    """FrozenContraction through the kernel = mace's Contraction, values and gradients (atoms of all elements,
    one element absent from the batch in a second call)."""
    module = mace_contraction(correlation, dtype)
    generator = torch.Generator().manual_seed(1)
    for elements in (torch.tensor([0, 2, 1, 2, 2, 0, 1]), torch.tensor([2, 2, 0, 2])):
        y = torch.nn.functional.one_hot(elements, 3).to(dtype)
        for contraction in module.contractions:
            ell = contraction.U_tensors(1).shape[-2]
            x = torch.randn(len(elements), 4, ell, generator=generator, dtype=dtype, requires_grad=True)
            expected = contraction(x, y)
            result = FrozenContraction(contraction)(x, y)
            torch.testing.assert_close(result, expected, **TOLERANCE[dtype])
            weights = torch.randn_like(expected)
            (grad,) = torch.autograd.grad((result * weights).sum(), x)
            (reference,) = torch.autograd.grad((expected * weights).sum(), x)
            torch.testing.assert_close(grad, reference, **TOLERANCE[dtype])


def test_contraction_kernel_gradients_by_finite_differences():
    contraction = FrozenContraction(mace_contraction(3, torch.float64).contractions[1])
    elements = torch.tensor([1, 0, 2, 1])
    features = torch.randn(4, 16, 4, dtype=torch.float64, requires_grad=True)  # [atoms, ell, channels]
    coefficients = contraction.channels_last(contraction.coefficients)
    lib = kernels.library(torch.float64)
    assert torch.autograd.gradcheck(lambda f: contraction.contract_fused(f, elements, coefficients, lib), (features,))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FHI_AL_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(build, "_libraries", {})
    return tmp_path / "kernels"


def test_kernels_are_compiled_once_and_reused(fresh_cache, monkeypatch):
    assert kernels.library(torch.float64) is not None
    assert len(list(fresh_cache.glob("*.so"))) == 1 and not list(fresh_cache.glob("tmp*"))

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(build, "_libraries", {})
    monkeypatch.setattr(subprocess, "run", no_compiler)
    assert kernels.library(torch.float64) is not None


def test_without_a_compiler_the_torch_implementation_is_used(fresh_cache, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(fresh_cache / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        assert kernels.library(torch.float64) is None
    assert "using the torch implementation" in caplog.text
    assert not list(fresh_cache.glob("*"))  # nothing half-written


def test_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("FHI_AL_FUSED_KERNELS", "0")
    assert kernels.library(torch.float64) is None
    monkeypatch.setenv("FHI_AL_FUSED_KERNELS", "1")
    assert kernels.library(torch.float64) is not None


def test_second_derivatives_are_refused():
    x, p, w, path, sender, receiver = message_inputs(torch.float64)
    out = kernels.FusedMessages.apply(x, p, w, path, sender, receiver, kernels.library(torch.float64))
    (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()


def test_kernels_are_only_offered_for_tensors_in_main_memory():
    assert kernels.kernels_for(torch.zeros(1, dtype=torch.float64)) is kernels.library(torch.float64)
    assert kernels.kernels_for(torch.zeros(1, dtype=torch.float64, device="meta")) is None
    assert kernels.kernels_for(torch.zeros(1, dtype=torch.float16)) is None


def test_a_failing_compiler_is_reported_with_its_message(fresh_cache, monkeypatch, caplog):
    compiler = fresh_cache.parent / "broken-cc"
    compiler.write_text("#!/bin/sh\necho 'broken-cc: no licence for today' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        assert kernels.library(torch.float32) is None
    assert "no licence for today" in caplog.text and "using the torch implementation" in caplog.text
    assert not list(fresh_cache.glob("*"))


def spied(dtype=torch.float64):
    """The real kernels with every entry point recording its calls before running."""
    lib = kernels.library(dtype)
    calls: list[str] = []

    def spy(name):
        def call(*args):
            calls.append(name)
            return getattr(lib, name)(*args)
        return call

    return dataclasses.replace(lib, **{name: spy(name) for name in build.SIGNATURES}), calls


@pytest.mark.parametrize("which, value", [("sender", 12), ("receiver", -1), ("path", 4)])
def test_out_of_range_message_indices_are_refused_before_the_kernel_runs(which, value):
    x, p, w, path, sender, receiver = message_inputs(torch.float64)
    indices = {"path": path.clone(), "sender": sender.clone(), "receiver": receiver.clone()}
    indices[which][3] = value  # 12 nodes, 4 paths
    lib, calls = spied()
    with pytest.raises(kernels.KernelInputError, match=rf"{which} holds indices in \[-?\d+, -?\d+\], outside"):
        kernels.FusedMessages.apply(x, p, w, indices["path"], indices["sender"], indices["receiver"], lib)
    assert calls == []
    kernels.FusedMessages.apply(x, p, w, path, sender, receiver, lib)  # the spy itself lets valid calls through
    assert calls == ["messages_forward"]


@pytest.mark.parametrize("which", ["elements", "monomials"])
def test_out_of_range_contraction_indices_are_refused_before_the_kernel_runs(which):
    mace_module = mace_contraction(2, torch.float64).contractions[0]
    ell = mace_module.U_tensors(1).shape[-2]
    contraction = FrozenContraction(mace_module)
    elements = torch.tensor([1, 0, 2, 1])
    features = torch.randn(4, ell, 4, dtype=torch.float64)  # [atoms, ell, channels]
    coefficients = contraction.channels_last(contraction.coefficients)
    extended = torch.cat([features, features.new_ones((4, 1, 4))], dim=1)
    monomials = contraction.monomials.clone()
    lib, calls = spied()
    kernels.FusedContraction.apply(extended, elements, coefficients, monomials, lib)  # valid: runs
    assert calls == ["contraction_forward"]
    calls.clear()
    if which == "elements":
        elements[2] = 3  # 3 species
    else:
        monomials[0, 0] = ell + 1  # rows 0 .. ell - 1 (the features) and ell (the factor 1)
    with pytest.raises(kernels.KernelInputError, match=f"{which} holds indices"):
        kernels.FusedContraction.apply(extended, elements, coefficients, monomials, lib)
    assert calls == []


def test_wrong_dtypes_and_shapes_are_refused_and_attempt_falls_back(caplog):
    x, p, w, path, sender, receiver = message_inputs(torch.float64)
    lib, calls = spied()
    cases = [((x.float(), p, w, path, sender, receiver), "x is torch.float32"),
             ((x, p, w, path, sender.int(), receiver), "sender is torch.int32"),
             ((x, p[:, :2], w, path, sender, receiver), "p has shape"),
             ((x, p, w[:-1], path, sender, receiver), "w has shape"),
             ((x, p, w, path[:-1], sender, receiver), "path has shape")]
    for args, message in cases:
        with pytest.raises(kernels.KernelInputError, match=message):
            kernels.FusedMessages.apply(*args, lib)
    with caplog.at_level(logging.WARNING, logger=checked.__name__):
        assert kernels.attempt(kernels.FusedMessages, x.float(), p, w, path, sender, receiver, lib) is None
    assert "refused its inputs (x is torch.float32" in caplog.text and "using the torch implementation" in caplog.text
    assert calls == []


def test_non_contiguous_inputs_give_the_contiguous_results():
    x, p, w, path, sender, receiver = message_inputs(torch.float64)
    lib = kernels.library(torch.float64)
    strided = [t.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True) for t in (x, p, w)]
    assert not any(t.is_contiguous() for t in strided)
    expected = kernels.FusedMessages.apply(x, p, w, path, sender, receiver, lib)
    result = kernels.FusedMessages.apply(*strided, path, sender[::1], receiver, lib)
    torch.testing.assert_close(result, expected, rtol=0, atol=0)
    grad = torch.randn_like(expected).transpose(0, 1).contiguous().transpose(0, 1)  # a strided upstream gradient
    for got, want in zip(torch.autograd.grad(result, strided, grad), torch.autograd.grad(expected, (x, p, w), grad)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_every_entry_point_has_declared_ctypes_types():
    for dtype in (torch.float64, torch.float32):
        lib = kernels.library(dtype)
        for name, (sizes, pointers) in build.SIGNATURES.items():
            function = getattr(lib, name)
            assert function.argtypes == [ctypes.c_int64] * sizes + [ctypes.c_void_p] * pointers
            assert function.restype is None
    with pytest.raises(ctypes.ArgumentError):  # declared types are enforced: a float is no size
        lib.messages_forward(1.5, 1, 1, 1, 1, *[None] * 7)


def test_instruction_set_level_only_when_the_cpu_has_all_of_it(tmp_path, monkeypatch):
    monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags\t\t: " + " ".join(sorted(build.X86_64_V3_FEATURES)) + " avx512f\n")
    assert build.cpu_level_flags(cpuinfo) == build.X86_64_V3
    cpuinfo.write_text("flags\t\t: " + " ".join(sorted(build.X86_64_V3_FEATURES - {"avx2"})) + "\n")
    assert build.cpu_level_flags(cpuinfo) == ()
    assert build.cpu_level_flags(tmp_path / "missing") == ()
    monkeypatch.setattr(build.platform, "machine", lambda: "aarch64")
    assert build.cpu_level_flags(Path("/proc/cpuinfo")) == ()


def test_level_and_portable_builds_are_cached_apart(fresh_cache, monkeypatch):
    """The flags are in the cache key: a CPU without the level (here: pretended) never loads the level's file."""
    monkeypatch.setattr(build, "cpu_level_flags", lambda: build.X86_64_V3)
    leveled = kernels.library(torch.float64).path
    monkeypatch.setattr(build, "_libraries", {})
    monkeypatch.setattr(build, "cpu_level_flags", lambda: ())
    portable = kernels.library(torch.float64).path
    assert leveled != portable and {p.name for p in fresh_cache.glob("*.so")} == {leveled.name, portable.name}


def test_a_compiler_without_the_level_builds_the_portable_library(fresh_cache, monkeypatch):
    compiler = fresh_cache.parent / "old-cc"
    compiler.write_text('#!/bin/sh\ncase "$*" in *-march=*) echo "old-cc: unknown -march" >&2; exit 1;; esac\n'
                        'exec cc "$@"\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setattr(build, "cpu_level_flags", lambda: build.X86_64_V3)
    assert kernels.library(torch.float64) is not None
    assert len(list(fresh_cache.glob("*.so"))) == 1 and not list(fresh_cache.glob("tmp*"))
