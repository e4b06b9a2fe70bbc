"""Collective variables (CVs) for biased MD: an interatomic distance, a bond angle or a torsion, each with its
analytic gradient with respect to the atomic positions.

Vectors between atoms are minimum-image vectors in a periodic cell, so a CV stays continuous when an atom
crosses the boundary. A torsion is periodic with period 2π and lives in (−π, π]; differences of its values
must be taken with `wrap_difference`.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
from ase import Atoms
from ase.geometry import find_mic

from ..errors import SettingsError
from ..settings.md_schema import CV_KINDS as SETTINGS_CV_KINDS

log = logging.getLogger(__name__)

N_ATOMS = SETTINGS_CV_KINDS  # kind -> number of atoms, as the settings declare them
CV_KINDS = tuple(N_ATOMS)
TORSION_PERIOD_RAD = 2.0 * np.pi
_TINY = 1e-12  # below this a cross product counts as zero (collinear atoms: angle and torsion are singular)


@dataclass(frozen=True)
class CollectiveVariable:
    """One CV: `kind` (one of CV_KINDS) of the atoms with 0-based indices `atoms` (2, 3 or 4 of them)."""

    kind: str
    atoms: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "atoms", tuple(int(i) for i in self.atoms))
        if self.kind not in CV_KINDS:
            raise ValueError(f"unknown collective variable {self.kind!r}; allowed: {', '.join(CV_KINDS)}")
        if len(self.atoms) != N_ATOMS[self.kind]:
            raise ValueError(f"a {self.kind} needs {N_ATOMS[self.kind]} atoms, got {len(self.atoms)}")

    @property
    def periodic(self) -> bool:
        """True for a torsion (period 2π, values in (−π, π])."""
        return self.kind == "torsion"

    @property
    def unit(self) -> str:
        return "Å" if self.kind == "distance" else "rad"

    def value_and_gradient(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """The CV value (Å or rad) and d(cv)/d(positions), an [N, 3] array that is zero for uninvolved atoms."""
        value, partials = _KERNELS[self.kind](bond_vectors(atoms, self.atoms))
        gradient = np.zeros((len(atoms), 3))
        for index, partial in zip(self.atoms, partials):
            gradient[index] += partial
        return value, gradient

    def describe(self) -> str:
        return f"{self.kind}({', '.join(str(i) for i in self.atoms)})"


def bond_vectors(atoms: Atoms, indices: tuple[int, ...]) -> np.ndarray:
    """The [len(indices) − 1, 3] vectors from each atom of `indices` to the next one, minimum-image if periodic."""
    positions = atoms.positions[list(indices)]
    vectors = np.diff(positions, axis=0)
    if atoms.pbc.any():
        vectors, _ = find_mic(vectors, atoms.cell, atoms.pbc)
    return vectors


def distance_kernel(vectors: np.ndarray) -> tuple[float, np.ndarray]:
    """r = |x_j − x_i| and its partials with respect to x_i and x_j (∓ the unit vector)."""
    bond = vectors[0]
    r = float(np.linalg.norm(bond))
    unit = bond / r
    return r, np.array([-unit, unit])


def angle_kernel(vectors: np.ndarray) -> tuple[float, np.ndarray]:
    """θ between j→i and j→k (rad, in [0, π]) and its partials with respect to x_i, x_j, x_k.

    With a = x_i − x_j, b = x_k − x_j and n = a × b: moving x_i along a × n (in the plane, perpendicular to a,
    away from b) opens the angle at the rate 1/|a|, so ∂θ/∂x_i = (a × n) / (|a|² |n|); likewise
    ∂θ/∂x_k = (n × b) / (|b|² |n|), and ∂θ/∂x_j = −(∂θ/∂x_i + ∂θ/∂x_k) by translation invariance.
    """
    a, b = -vectors[0], vectors[1]
    normal = np.cross(a, b)
    sine_norm = float(np.linalg.norm(normal))
    theta = float(np.arctan2(sine_norm, float(a @ b)))
    if sine_norm < _TINY:
        return theta, np.zeros((3, 3))
    d_i = np.cross(a, normal) / (float(a @ a) * sine_norm)
    d_k = np.cross(normal, b) / (float(b @ b) * sine_norm)
    return theta, np.array([d_i, -(d_i + d_k), d_k])


def torsion_kernel(vectors: np.ndarray) -> tuple[float, np.ndarray]:
    """The dihedral angle i-j-k-l (rad, in (−π, π], IUPAC sign) and its partials with respect to x_i..x_l.

    With b1 = x_j − x_i, b2 = x_k − x_j, b3 = x_l − x_k, m = b1 × b2 and n = b2 × b3:
    φ = atan2(|b2| b1·n, m·n). φ changes with x_i only by a rotation of i about the axis j-k; moving x_i
    along the plane normal m turns it at the rate 1/(distance of i from the axis) = |b2| / |m|, in the
    direction that lowers φ, so ∂φ/∂x_i = −|b2| m / |m|², and symmetrically ∂φ/∂x_l = |b2| n / |n|².
    The partials of the middle atoms follow from invariance under translation (they sum to zero) and rigid
    rotation (zero total torque): the foot of i on the axis lies at x_j − p b2 and that of l at x_k + q b2,
    with p = b1·b2 / |b2|² and q = b3·b2 / |b2|², and the lever rule shares each end partial between j and k:
    ∂φ/∂x_j = −(1 + p) ∂φ/∂x_i + q ∂φ/∂x_l and ∂φ/∂x_k = −(1 + q) ∂φ/∂x_l + p ∂φ/∂x_i.
    """
    b1, b2, b3 = vectors
    m, n = np.cross(b1, b2), np.cross(b2, b3)
    b2_norm2 = float(b2 @ b2)
    b2_norm = np.sqrt(b2_norm2)
    phi = float(wrap_angle(np.arctan2(b2_norm * float(b1 @ n), float(m @ n))))
    m2, n2 = float(m @ m), float(n @ n)
    if m2 < _TINY or n2 < _TINY:
        return phi, np.zeros((4, 3))
    d_i = -b2_norm * m / m2
    d_l = b2_norm * n / n2
    p, q = float(b1 @ b2) / b2_norm2, float(b3 @ b2) / b2_norm2
    d_j = -(1.0 + p) * d_i + q * d_l
    d_k = -(1.0 + q) * d_l + p * d_i
    return phi, np.array([d_i, d_j, d_k, d_l])


_KERNELS = {"distance": distance_kernel, "angle": angle_kernel, "torsion": torsion_kernel}


def wrap_angle(angle_rad: Any) -> Any:
    """An angle (or array of angles) mapped into (−π, π]."""
    return np.pi - np.mod(np.pi - angle_rad, TORSION_PERIOD_RAD)


def wrap_difference(delta: Any, cv: CollectiveVariable) -> Any:
    """A difference of two values of `cv`: wrapped into (−π, π] for a periodic CV, unchanged otherwise."""
    return wrap_angle(delta) if cv.periodic else delta


def parse_cv(entry: Any, n_atoms: int, where: str) -> CollectiveVariable:
    """The CV of one settings list item, `{distance: [i, j]}`, `{angle: [i, j, k]}` or
    `{torsion: [i, j, k, l]}` with 0-based indices into a geometry of `n_atoms` atoms.

    Raises SettingsError naming `where` (the dotted key path of the item) for anything unusable.
    """
    kind, indices = _single_entry(entry, where)
    expected = N_ATOMS[kind]
    if not isinstance(indices, (list, tuple)) or len(indices) != expected:
        got = f"{len(indices)}" if isinstance(indices, (list, tuple)) else repr(indices)
        raise SettingsError(f"{_article(kind)} {kind} needs a list of {expected} atom indices, got {got}",
                            where=where)
    atoms = tuple(_atom_index(value, n_atoms, where) for value in indices)
    repeated = sorted({i for i in atoms if atoms.count(i) > 1})
    if repeated:
        raise SettingsError(f"atom index {repeated[0]} appears more than once in {list(atoms)}; "
                            f"{_article(kind)} {kind} needs {expected} different atoms", where=where)
    return CollectiveVariable(kind, atoms)


def _single_entry(entry: Any, where: str) -> tuple[str, Any]:
    example = "e.g. {torsion: [0, 1, 2, 3]}"
    if not isinstance(entry, dict) or len(entry) != 1:
        raise SettingsError(f"a collective variable is a mapping with one key, one of {', '.join(CV_KINDS)} "
                            f"({example}), got {entry!r}", where=where)
    (kind, indices), = entry.items()
    if kind not in CV_KINDS:
        close = difflib.get_close_matches(str(kind), CV_KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SettingsError(f"unknown collective variable {kind!r}: allowed kinds are {', '.join(CV_KINDS)}"
                            f"{hint}", where=where)
    return kind, indices


def _atom_index(value: Any, n_atoms: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise SettingsError(f"atom indices are integers (0-based), got {value!r}", where=where)
    if not 0 <= value < n_atoms:
        raise SettingsError(f"atom index {value} is out of range: the geometry has {n_atoms} atoms "
                            f"(0..{n_atoms - 1})", where=where)
    return int(value)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
