"""Optional C kernels for stacked MACE ensembles: the message passing of an interaction block and the frozen
symmetric contraction, for all members at once (mace_kernels.c), compiled on first use.

In torch the message passing materialises tensors of shape [members x edges, channels, columns] and the frozen
contraction the monomials of every channel and atom; most of the time goes into moving them through memory. The
kernels compute the same sums edge by edge and atom by atom with the data in cache. They are an accelerator
only: channel_major.py and frozen.py hold the torch code with the same results, used when the kernels are
switched off (FHI_AL_FUSED_KERNELS=0), cannot be built (build.py), or refuse their inputs (checked.py).
"""

from .build import DISABLE_VARIABLE, Kernels, enabled, kernels_for, library
from .checked import FusedContraction, FusedMessages, KernelInputError, attempt

__all__ = ["DISABLE_VARIABLE", "FusedContraction", "FusedMessages", "KernelInputError", "Kernels", "attempt",
           "enabled", "kernels_for", "library"]
