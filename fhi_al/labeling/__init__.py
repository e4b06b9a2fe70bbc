"""The labelling service: frame -> label, whatever the number of ranks.

`label` builds a label that carries its structure; `serial` computes labels in this process (the other ranks
joining a collective reference); `groups` queues them to reference groups (parallel mode); `service` runs a
procedure on the ML rank with the reference and the label queue and makes the other ranks serve. Below it:
`fhi_al.parallel` (communicators) and `fhi_al.references` (calculators); above it: data, training, procedures.
"""

from .groups import GroupLabeler, RemoteReference, serve_reference_group
from .label import (LABEL_ID_KEY, REF_ENERGY_KEY, REF_FORCES_KEY, REF_STRESS_KEY, REFERENCE_KEY, SYSTEM_KEY,
                    LabelResult, label_from_results, label_structure, labelled_atoms)
from .serial import SerialLabeler, SharedReference, serve_shared_reference
from .service import Services, run_procedure

__all__ = ["GroupLabeler", "RemoteReference", "serve_reference_group", "LABEL_ID_KEY", "REF_ENERGY_KEY",
           "REF_FORCES_KEY", "REF_STRESS_KEY", "REFERENCE_KEY", "SYSTEM_KEY", "LabelResult", "label_from_results",
           "label_structure", "labelled_atoms", "SerialLabeler", "SharedReference", "serve_shared_reference",
           "Services", "run_procedure"]
