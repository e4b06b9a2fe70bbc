"""Radial and angular basis of the neighbour density: Laplacian eigenstates of a sphere (spherical Bessel
functions at their zeros), real spherical harmonics of any l, and a smooth cutoff; all differentiable in torch.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import spherical_jn

log = logging.getLogger(__name__)

SERIES_TERMS = 40  # power series of j_l below x = max(l, 1): terms shrink below 1e-17 well before this for l <= 20
CUTOFF_SMOOTHING_WIDTH_A = 0.5  # radial functions are multiplied by a cosine step over [rc - w, rc]
MAX_CUTOFF_SMOOTHING_FRACTION = 0.5  # ... with w at most this fraction of rc


def bessel_zeros(basis_cutoff: float) -> list[np.ndarray]:
    """Zeros z_nl of j_l with z_nl^2 <= basis_cutoff, one array per l = 0 .. l_max (zeros of j_l+1
    interlace those of j_l, so each set brackets the next)."""
    largest = math.sqrt(basis_cutoff)
    previous = np.pi * np.arange(1, int(largest / np.pi) + int(largest) + 3)
    per_l, l = [], 0
    while True:
        kept = previous[previous <= largest]
        if kept.size == 0:
            return per_l
        per_l.append(kept)
        order = l + 1
        previous = np.array([brentq(lambda x: spherical_jn(order, x), a, b)
                             for a, b in zip(previous[:-1], previous[1:])])
        l += 1


def spherical_bessel(l_of: torch.Tensor, x: torch.Tensor, l_max: int) -> torch.Tensor:
    """j_l(x) for x [..., F] > 0 with column orders l_of [F]: power series where x < max(l, 1), upward
    recurrence elsewhere (stable there). Both branches see safe arguments so gradients stay finite."""
    threshold = torch.clamp(l_of.to(x.dtype), min=1.0)
    use_series = x < threshold
    x_series = torch.where(use_series, x, torch.full_like(x, 0.5))
    x_recur = torch.clamp(x, min=1.0)
    series = _bessel_series(l_of, x_series)
    recurrence = _bessel_recurrence(x_recur, l_max)  # [..., F, l_max + 1]
    gathered = torch.gather(recurrence, -1, l_of.expand_as(x).unsqueeze(-1)).squeeze(-1)
    return torch.where(use_series, series, gathered)


def _bessel_series(l_of: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x^l / (2l+1)!! * sum_k (-x^2/2)^k / (k! (2l+3)(2l+5)...(2l+2k+1))."""
    l_float = l_of.to(x.dtype)
    double_factorial = torch.tensor([float(np.prod(np.arange(2 * int(l) + 1, 0, -2))) for l in l_of.tolist()],
                                    dtype=x.dtype, device=x.device)
    half_square = -0.5 * x * x
    term, total = torch.ones_like(x), torch.ones_like(x)
    for k in range(1, SERIES_TERMS + 1):
        term = term * half_square / (k * (2.0 * l_float + 2.0 * k + 1.0))
        total = total + term
    return torch.pow(x, l_float) / double_factorial * total


def _bessel_recurrence(x: torch.Tensor, l_max: int) -> torch.Tensor:
    """j_0 .. j_l_max at x >= 1 by j_l+1 = (2l+1)/x j_l - j_l-1, stacked on a new last axis."""
    sine, cosine = torch.sin(x), torch.cos(x)
    values = [sine / x]
    if l_max >= 1:
        values.append(sine / (x * x) - cosine / x)
    for l in range(1, l_max):
        values.append((2 * l + 1) / x * values[l] - values[l - 1])
    return torch.stack(values, dim=-1)


def smooth_cutoff(distance_A: torch.Tensor, cutoff_A: float) -> torch.Tensor:
    """1 below rc - w, 0.5 (1 + cos(pi (r - rc + w) / w)) up to rc, 0 beyond: value and slope vanish at rc."""
    width = min(CUTOFF_SMOOTHING_WIDTH_A, MAX_CUTOFF_SMOOTHING_FRACTION * cutoff_A)
    start = cutoff_A - width
    step = 0.5 * (1.0 + torch.cos(torch.clamp(distance_A - start, min=0.0) * (math.pi / width)))
    return torch.where(distance_A < cutoff_A, step, torch.zeros_like(step))


def real_spherical_harmonics(unit: torch.Tensor, l_max: int) -> list[torch.Tensor]:
    """Orthonormal real Y_lm of unit vectors [P, 3], one [P, 2l+1] tensor per l (m = -l .. l), from
    Legendre recurrences on z and (x + iy)^m, so there is no singularity at the poles and no limit on l."""
    x, y, z = unit.unbind(-1)
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(l_max):
        cos_m.append(x * cos_m[-1] - y * sin_m[-1])
        sin_m.append(x * sin_m[-1] + y * cos_m[-2])
    legendre = _legendre_polynomials_over_sine(z, l_max)
    harmonics = []
    for l in range(l_max + 1):
        rows = []
        for m in range(-l, l + 1):
            a = abs(m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - a) / math.factorial(l + a))
            if m == 0:
                rows.append(norm * legendre[(l, 0)])
            else:
                rows.append(math.sqrt(2.0) * norm * legendre[(l, a)] * (cos_m[a] if m > 0 else sin_m[a]))
        harmonics.append(torch.stack(rows, dim=-1))
    return harmonics


def _legendre_polynomials_over_sine(z: torch.Tensor, l_max: int) -> dict[tuple[int, int], torch.Tensor]:
    """Q_l^m(z) = P_l^m(z) / sin^m(theta) (Condon-Shortley phase), polynomials in z."""
    q: dict[tuple[int, int], torch.Tensor] = {}
    for m in range(l_max + 1):
        q[(m, m)] = torch.full_like(z, (-1.0) ** m * float(np.prod(np.arange(2 * m - 1, 0, -2))))
        if m + 1 <= l_max:
            q[(m + 1, m)] = (2 * m + 1) * z * q[(m, m)]
        for l in range(m + 2, l_max + 1):
            q[(l, m)] = ((2 * l - 1) * z * q[(l - 1, m)] - (l + m - 1) * q[(l - 2, m)]) / (l - m)
    return q


class LaplacianEigenstateBasis(torch.nn.Module):
    """R_nl(r) = sqrt(2) / |j_l+1(z_nl)| j_l(z_nl x(r)) fc(r): orthonormal on the unit ball in x, with
    x = r / rc (le) or (1 - exp(-r/s)) / (1 - exp(-rc/s)) (physical); optional learnable mixing per l."""

    def __init__(self, *, cutoff_A: float, basis_cutoff: float, radial_basis_type: str, basis_scale_A: float,
                 trainable: bool):
        super().__init__()
        zeros = bessel_zeros(basis_cutoff)
        self.cutoff_A, self.scale_A, self.kind = float(cutoff_A), float(basis_scale_A), radial_basis_type
        self.num_per_l = [len(z) for z in zeros]
        l_of = np.concatenate([[l] * len(z) for l, z in enumerate(zeros)]).astype(np.int64)
        flat = np.concatenate(zeros)
        self.register_buffer("zeros", torch.tensor(flat, dtype=torch.float64))
        self.register_buffer("l_of", torch.tensor(l_of, dtype=torch.long))
        self.register_buffer("norms", torch.tensor(np.sqrt(2.0) / np.abs(spherical_jn(l_of + 1, flat)),
                                                   dtype=torch.float64))
        self.mixing = (torch.nn.ParameterList(torch.nn.Parameter(torch.eye(n)) for n in self.num_per_l)
                       if trainable else None)

    @property
    def l_max(self) -> int:
        return len(self.num_per_l) - 1

    def scaled_distance(self, distance_A: torch.Tensor) -> torch.Tensor:
        if self.kind == "le":
            return distance_A / self.cutoff_A
        return -torch.expm1(-distance_A / self.scale_A) / -math.expm1(-self.cutoff_A / self.scale_A)

    def forward(self, distance_A: torch.Tensor) -> list[torch.Tensor]:
        """Radial functions [P, n_l] per l."""
        argument = self.scaled_distance(distance_A).unsqueeze(-1) * self.zeros
        values = self.norms * spherical_bessel(self.l_of, argument, self.l_max)
        values = values * smooth_cutoff(distance_A, self.cutoff_A).unsqueeze(-1)
        per_l = list(torch.split(values, self.num_per_l, dim=-1))
        if self.mixing is not None:
            per_l = [block @ mixing for block, mixing in zip(per_l, self.mixing)]
        return per_l
