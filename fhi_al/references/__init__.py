"""Reference calculators (aims via asi4py, xtb, pyscf, emt): every one an ASE Calculator.

`make_reference` builds one by name, `compute_label` runs it with every failure mapped to ReferenceError.
"""

from .base import (ReferenceLabel, compute_label, compute_reference_label, evaluate, gives_stress, is_collective,
                   is_periodic_cell, reference_name)
from .factory import (REFERENCE_NAMES, make_reference, options_dict, reference_from_settings, reference_kwargs,
                      reference_timeout_from_settings)
from .faults import ENV_VAR as FAULTS_ENV_VAR
from .faults import FaultInjectingCalculator, FaultSpec, parse_faults, wrap_with_faults
from .ledger import Ledger, ledger_label_ids, read_ledger

__all__ = ["REFERENCE_NAMES", "ReferenceLabel", "compute_label", "compute_reference_label", "gives_stress",
           "is_periodic_cell", "evaluate", "is_collective", "make_reference", "options_dict",
           "reference_from_settings", "reference_kwargs", "reference_name", "reference_timeout_from_settings",
           "FAULTS_ENV_VAR", "FaultInjectingCalculator", "FaultSpec", "parse_faults", "wrap_with_faults", "Ledger",
           "ledger_label_ids", "read_ledger"]
