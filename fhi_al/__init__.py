"""fhi_al: machine-learned force fields built automatically by active learning.

The package is split into settings, a communicator layer (`parallel`), references, the labelling service
(`labeling`), data, training, architectures and procedures, each importing only the layers below it.
Importing the package is cheap; heavy modules load on use.
"""

__version__ = "0.1.0"

import os as _os

# On small nodes extra threads per rank cost far more than they bring (measured 10-100x slower under
# load with 2 threads on 2 cores); users who want more set OMP_NUM_THREADS themselves.
_os.environ.setdefault("OMP_NUM_THREADS", "1")


def __getattr__(name: str):
    """`from fhi_al import EnsembleCalculator` without importing torch when the package itself is imported."""
    if name == "EnsembleCalculator":
        from .ensemble import EnsembleCalculator

        return EnsembleCalculator
    raise AttributeError(f"module 'fhi_al' has no attribute {name!r}")


__all__ = ["EnsembleCalculator", "__version__"]
