"""The fused C kernels of stacked MACE ensembles: against plain torch sums, mace's own symmetric contraction and
finite differences, in float64 and float32; compiled once and cached; a missing compiler falls back to torch."""

from __future__ import annotations

import logging
import subprocess

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
