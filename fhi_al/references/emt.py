"""ASE's effective-medium potential as a reference, for tests of the workflow logic only.

Cheap and analytic: lets tests exercise labelling, datasets and restarts without a quantum-chemistry code.
"""

from __future__ import annotations

import logging

from ase.calculators.emt import EMT

log = logging.getLogger(__name__)


def make_emt() -> EMT:
    return EMT()
