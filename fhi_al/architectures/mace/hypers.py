"""Hyperparameters of the MACE architecture, with mace-torch's own names (mace_settings.yaml ARCHITECTURE)."""

from __future__ import annotations

from dataclasses import dataclass

from ...settings.typed import option


@dataclass(frozen=True)
class MaceHypers:
    r_max: float = option(5.0, "Cutoff radius of the neighbour graph.", minimum=0.0, exclusive_minimum=True, unit="Å")
    num_channels: int = option(32, "Number of embedding channels (mace's --num_channels).", minimum=1)
    max_L: int = option(1, "Highest symmetry order of the equivariant messages (0 invariant, 1, 2, 3).",
                        minimum=0, maximum=3)
    max_ell: int = option(3, "Highest l of the spherical harmonics of edge directions.", minimum=1)
    num_radial_basis: int = option(8, "Number of Bessel radial basis functions.", minimum=1)
    num_cutoff_basis: int = option(5, "Power of the polynomial cutoff envelope.", minimum=1)
    num_interactions: int = option(2, "Number of message-passing layers.", minimum=1)
    correlation: int = option(3, "Body order of the product basis minus one.", minimum=1)
    interaction: str = option("RealAgnosticResidualInteractionBlock", "Interaction block class of mace.modules.",
                              choices=["RealAgnosticResidualInteractionBlock", "RealAgnosticInteractionBlock",
                                       "RealAgnosticDensityInteractionBlock",
                                       "RealAgnosticDensityResidualInteractionBlock"])
    interaction_first: str = option("RealAgnosticResidualInteractionBlock", "Interaction block of the first layer.",
                                    choices=["RealAgnosticResidualInteractionBlock", "RealAgnosticInteractionBlock",
                                             "RealAgnosticDensityInteractionBlock",
                                             "RealAgnosticDensityResidualInteractionBlock"])
    MLP_irreps: str = option("16x0e", "Irreps of the non-linear readout's hidden layer.")
    radial_MLP: list[int] = option([64, 64, 64], "Hidden widths of the radial MLP.")
    radial_type: str = option("bessel", "Radial basis.", choices=["bessel", "gaussian", "chebyshev"])
    gate: str = option("silu", "Non-linearity of the readout.", choices=["silu", "tanh", "abs", "None"])
    scaling: str = option("rms_forces_scaling", "How ScaleShiftMACE's scale is set from the training set.",
                          choices=["rms_forces_scaling", "std_scaling", "no_scaling"])
    hidden_irreps: str | None = option(None, "Overrides num_channels/max_L when given, e.g. '32x0e + 32x1o'.")
