"""Hyperparameters of the alchemical SOAP-BPNN (mace_settings.yaml ARCHITECTURE, model: alchemical).

Names follow metatrain's alchemical model (soap: ..., bpnn: ...) flattened into one section; lengths in Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import SettingsError
from ...settings.typed import option

RADIAL_BASIS_TYPES = ("le", "physical")
SMALLEST_EIGENVALUE = math.pi ** 2  # z_10^2: below it the basis is empty


@dataclass(frozen=True)
class AlchemicalHypers:
    num_pseudo_species: int = option(4, "Number of pseudo-species: learnable linear combinations of the elements "
                                        "into which neighbour (and, with contract_center_species, centre) "
                                        "species are compressed; feature size depends on it, not on the "
                                        "number of elements.", minimum=1)
    cutoff_radius: float = option(5.0, "Radius of the neighbour density.", minimum=0.0, exclusive_minimum=True,
                                  unit="Å")
    basis_cutoff: float = option(200.0, "Energy cutoff E_max of the Laplacian-eigenstate basis (dimensionless, "
                                        "unit sphere): every (n, l) with z_nl^2 <= E_max is kept, z_nl the n-th "
                                        "zero of j_l. 50 gives l_max 3, 200 gives l_max 9 (metatrain uses 400).",
                                 minimum=0.0, exclusive_minimum=True)
    radial_basis_type: str = option("physical", "le: Laplacian eigenstates j_l(z_nl r/rc) of the sphere; "
                                                "physical: the same functions of the scaled distance "
                                                "(1-exp(-r/s))/(1-exp(-rc/s)), s = basis_scale, which puts "
                                                "more resolution at short distances.",
                                    choices=list(RADIAL_BASIS_TYPES))
    basis_scale: float = option(3.0, "Length scale s of the physical radial basis (unused with le).",
                                minimum=0.0, exclusive_minimum=True, unit="Å")
    trainable_basis: bool = option(True, "Learn a linear mixing of the radial functions of each l "
                                         "(initialised to the identity).")
    normalize: bool = option(True, "Scale the density by 1/sqrt(mean number of neighbours) and layer-normalise "
                                   "the power spectrum of every atom.")
    contract_center_species: bool = option(True, "Weight per-pseudo-species networks by the centre's pseudo-"
                                                 "species weights (size independent of the number of "
                                                 "elements) instead of one network per element.")
    hidden_sizes: list[int] = option([32, 32], "Widths of the hidden layers of each atomic network (SiLU).")
    output_size: int = option(1, "Outputs of each atomic network: the atomic energy (only 1 is supported; "
                                 "kept so that metatrain-style settings validate).", choices=[1])

    def __post_init__(self) -> None:
        if self.basis_cutoff < SMALLEST_EIGENVALUE:
            raise SettingsError(f"got {self.basis_cutoff!r}; must be >= pi^2 = {SMALLEST_EIGENVALUE:.3f} to keep "
                                f"at least one radial function", where="ARCHITECTURE.basis_cutoff")
        if not self.hidden_sizes:
            raise SettingsError("got []; give at least one hidden layer", where="ARCHITECTURE.hidden_sizes")
        for index, width in enumerate(self.hidden_sizes):
            if int(width) < 1:
                raise SettingsError(f"got {width!r}; layer widths must be >= 1",
                                    where=f"ARCHITECTURE.hidden_sizes[{index}]")

    @property
    def r_max(self) -> float:
        """The neighbour-graph radius the engine uses for statistics (Å)."""
        return float(self.cutoff_radius)
