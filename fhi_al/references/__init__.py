"""Reference calculators (aims via asi4py, xtb, pyscf, emt): every one an ASE Calculator.

`make_reference` builds one by name, `compute_label` runs it with every failure mapped to ReferenceError.
"""

from .base import compute_label, evaluate, is_collective, reference_name
from .factory import (REFERENCE_NAMES, make_reference, options_dict, reference_from_settings, reference_kwargs,
                      reference_timeout_from_settings)
from .faults import ENV_VAR as FAULTS_ENV_VAR
from .faults import FaultInjectingCalculator, FaultSpec, parse_faults, wrap_with_faults
from .ledger import Ledger, ledger_label_ids, read_ledger

__all__ = ["REFERENCE_NAMES", "compute_label", "evaluate", "is_collective", "make_reference", "options_dict",
           "reference_from_settings", "reference_kwargs", "reference_name", "reference_timeout_from_settings",
           "FAULTS_ENV_VAR", "FaultInjectingCalculator", "FaultSpec", "parse_faults", "wrap_with_faults", "Ledger",
           "ledger_label_ids", "read_ledger"]
