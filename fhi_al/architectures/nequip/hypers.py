"""Hyperparameters of the NequIP-style equivariant network (mace_settings.yaml ARCHITECTURE, model: NequIP).

Names follow nequip's own configuration keys; lengths are in Å, energies in eV. Imports neither torch nor e3nn.
"""

from __future__ import annotations

from dataclasses import dataclass

from ase.data import atomic_numbers as ATOMIC_NUMBERS

from ...errors import SettingsError
from ...settings.typed import option

PerType = dict[str | int, float] | float | None


@dataclass(frozen=True)
class NequipHypers:
    r_max: float = option(5.0, "Cutoff radius of the neighbour graph.", minimum=0.0, exclusive_minimum=True,
                          unit="Å")
    num_layers: int = option(4, "Number of interaction (convolution + gate) layers.", minimum=1)
    l_max: int = option(1, "Highest rotation order l of the spherical harmonics and of the node features.",
                        minimum=0, maximum=4)
    num_features: int = option(32, "Channels (multiplicity) of every irrep of the hidden node features.", minimum=1)
    parity: bool = option(True, "Hidden features of both parities for every l (nequip's o3_full); false keeps only "
                                "the parity (-1)^l of the spherical harmonics.")
    num_basis: int = option(8, "Number of Bessel functions of the radial basis.", minimum=1)
    PolynomialCutoff_p: int = option(6, "Power p of the polynomial cutoff envelope (smooth to order p).",
                                     minimum=1, aliases=("polynomial_cutoff_p",))
    invariant_layers: int = option(2, "Hidden layers of the radial MLP that weights each tensor product path.",
                                   minimum=1)
    invariant_neurons: int = option(64, "Width of the hidden layers of the radial MLP.", minimum=1)
    resnet: bool = option(True, "Residual update h <- h + layer(h) wherever a layer keeps the feature irreps.")
    avg_num_neighbors: float | None = option(None, "Messages are summed and divided by sqrt(avg_num_neighbors); "
                                                   "null takes the training set's mean neighbour count.",
                                             minimum=0.0, exclusive_minimum=True)
    per_type_energy_shift: PerType = option(
        None, "Per-element shift of the atomic energy (mapping element -> eV, or one number for all); null takes "
              "the E0s of the statistics (ARCHITECTURE.atomic_energies or least squares).", unit="eV")
    per_type_energy_scale: PerType = option(
        None, "Per-element scale of the network's atomic output (mapping element -> eV, or one number for all); "
              "null takes the RMS of the training forces (times 1 Å).", unit="eV")

    def __post_init__(self) -> None:
        for name in ("per_type_energy_shift", "per_type_energy_scale"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, _by_atomic_number(value, f"ARCHITECTURE.{name}"))
        scale = self.per_type_energy_scale
        values = scale.values() if isinstance(scale, dict) else [] if scale is None else [scale]
        if any(float(v) <= 0.0 for v in values):
            raise SettingsError(f"got {scale!r}; scales must be > 0", where="ARCHITECTURE.per_type_energy_scale")


def _by_atomic_number(values: dict, where: str) -> dict[int, float]:
    """Keys given as element symbols or atomic numbers, normalised to atomic numbers."""
    normalised = {}
    for key, value in values.items():
        if isinstance(key, str) and not key.isdigit():
            if key not in ATOMIC_NUMBERS:
                raise SettingsError(f"unknown element {key!r}", where=f"{where}.{key}")
            number = ATOMIC_NUMBERS[key]
        else:
            number = int(key)
        normalised[number] = float(value)
    return normalised
