"""Hyperparameters of the aenet-style Behler-Parrinello network (mace_settings.yaml ARCHITECTURE, model: aenet).

Names follow aenet's Chebyshev basis (radial/angular order and cutoff); lengths are in Å.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SettingsError
from ...settings.typed import option

ACTIVATIONS = ("tanh", "mtanh", "sigmoid", "silu")
ENERGY_SCALINGS = ("rms_forces_scaling", "std_scaling", "no_scaling")


@dataclass(frozen=True)
class AenetHypers:
    rad_order: int = option(10, "Highest order of the radial Chebyshev expansion (order + 1 functions).",
                            minimum=0)
    rad_cutoff: float = option(5.0, "Cutoff radius of the radial descriptor.", minimum=0.0,
                               exclusive_minimum=True, unit="Å")
    ang_order: int = option(4, "Highest order of the Chebyshev expansion of cos(theta_ijk) (order + 1 functions).",
                            minimum=0)
    ang_cutoff: float = option(3.5, "Cutoff radius of both bonds of an angular triplet.", minimum=0.0,
                               exclusive_minimum=True, unit="Å")
    min_cutoff: float = option(0.0, "Lower end of the distance interval [min_cutoff, rad_cutoff] mapped onto the "
                                     "Chebyshev domain [-1, 1] (aenet uses 0).", minimum=0.0, unit="Å")
    hidden_sizes: list[int] = option([16, 16], "Widths of the hidden layers of each per-species network.")
    activation: str = option("tanh", "Activation of the hidden layers (mtanh = 1.7159 tanh(2x/3)).",
                             choices=list(ACTIVATIONS))
    species_weighted: bool = option(True, "Add aenet's species-weighted copy of the descriptor (neighbours "
                                          "weighted by a per-element 'type spin') when there are several elements.")
    normalize_features: bool = option(True, "Shift and scale descriptors per element to zero mean and unit "
                                            "standard deviation over the training set.")
    normalize_energy: bool = option(True, "Predict atomic energies as E0 + mean + scale * network output, with "
                                          "mean and scale from the training set.")
    energy_scaling: str = option("rms_forces_scaling", "Scale of the network output when normalize_energy: RMS "
                                 "of the training forces (times 1 Å) or std of the per-atom energy.",
                                 choices=list(ENERGY_SCALINGS))

    def __post_init__(self) -> None:
        if self.min_cutoff >= self.rad_cutoff:
            raise SettingsError(f"got {self.min_cutoff!r}; must be < rad_cutoff ({self.rad_cutoff})",
                                where="ARCHITECTURE.min_cutoff")
        for index, width in enumerate(self.hidden_sizes):
            if int(width) < 1:
                raise SettingsError(f"got {width!r}; layer widths must be >= 1",
                                    where=f"ARCHITECTURE.hidden_sizes[{index}]")

    @property
    def max_cutoff_A(self) -> float:
        return max(self.rad_cutoff, self.ang_cutoff)
