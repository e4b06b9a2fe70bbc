"""Hyperparameters of ALIGNN (mace_settings.yaml ARCHITECTURE, model: ALIGNN); names follow the ALIGNN package.

Defaults are sized for CPU active learning on small molecules; the ALIGNN paper uses cutoff 8 Å, k_nearest with
12 neighbours, 4 + 4 layers, 256 hidden, 64 embedding, 80 edge and 40 triplet basis functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SettingsError
from ...settings.typed import option

NEIGHBOR_STRATEGIES = ("radius_graph", "k_nearest")
NORMALIZATIONS = ("layer", "none")


@dataclass(frozen=True)
class AlignnHypers:
    cutoff: float = option(5.0, "Radius of the atom graph: atoms closer than this are bonded.", minimum=0.0,
                           exclusive_minimum=True, unit="Å")
    max_neighbors: int = option(12, "With neighbor_strategy k_nearest: bonds per atom to its nearest neighbours "
                                    "within the cutoff (ignored by radius_graph).", minimum=1)
    neighbor_strategy: str = option("radius_graph", "radius_graph: all neighbours within the cutoff (energy "
                                    "smooth as atoms cross it); k_nearest: the max_neighbors nearest ones (energy "
                                    "jumps when the neighbour ranking changes: avoid for MD).",
                                    choices=list(NEIGHBOR_STRATEGIES))
    gcn_layers: int = option(2, "Edge-gated graph convolutions on the atom graph after the ALIGNN layers.",
                             minimum=0)
    alignn_layers: int = option(2, "ALIGNN layers: a convolution on the atom graph (atoms, bonds) followed by one "
                                   "on its line graph (bonds, angles).", minimum=0)
    hidden_features: int = option(64, "Width of atom, bond and angle features in the convolutions.", minimum=1)
    embedding_features: int = option(32, "Width of the element embedding and of the first layer of the bond and "
                                         "angle embeddings.", minimum=1)
    edge_input_features: int = option(40, "Gaussian basis functions of the bond length on [0, cutoff].", minimum=2)
    triplet_input_features: int = option(20, "Gaussian basis functions of the bond-angle cosine on [-1, 1].",
                                         minimum=2)
    envelope_exponent: int = option(6, "Exponent p of the polynomial cutoff envelope multiplying every message "
                                       "(value and two derivatives vanish at the cutoff).", minimum=1)
    normalization: str = option("layer", "Normalisation inside the convolutions: per-atom/per-bond layer norm "
                                "(batch norm would couple structures of a batch) or none.",
                                choices=list(NORMALIZATIONS))

    def __post_init__(self) -> None:
        if self.alignn_layers + self.gcn_layers < 1:
            raise SettingsError("got 0 ALIGNN and 0 GCN layers; at least one convolution is needed",
                                where="ARCHITECTURE.alignn_layers")

    @property
    def r_max(self) -> float:
        """The engine's name for the graph radius (Å)."""
        return float(self.cutoff)
