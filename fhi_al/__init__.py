"""fhi_al: machine-learned force fields built automatically by active learning.

The package is split into settings, references, data, training, architectures, procedures and one
module for everything MPI (`parallel`). Importing the package is cheap; heavy modules load on use.
"""

__version__ = "0.1.0"
