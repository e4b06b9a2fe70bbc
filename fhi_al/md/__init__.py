"""Molecular dynamics for sampling: dynamics (NVT Langevin, NPT), restartable state, frame checks and one guarded
dynamics that every MD runs in (see the modules of this package)."""

from .dynamics import (COM_DOF, MDParameters, initialize_velocities, kinetic_temperature_K, make_dynamics,
                       make_langevin)
from .state import (MDState, md_state, restore_md_state)
from .checks import (BlowUpDetector, CONTACT_SEARCH_FRACTION, DEFAULT_MAX_DISTANCE_A,
                     DEFAULT_MAX_REFERENCE_FORCE_EV_PER_A, DEFAULT_MAX_TEMPERATURE_FACTOR,
                     DEFAULT_MIN_DISTANCE_FRACTION, FORCE_ABOVE, FrameBounds, MAX_VOLUME_RATIO,
                     MIN_CELL_FLATNESS, MIN_VOLUME_RATIO, TOO_CLOSE, TOO_HOT, cell_problem,
                     closest_contact_fraction, reference_force_rejection, rejection_kind)
from .guarded import (BlowUp, GuardedDynamics, LastGoodFrame)
from .npt import (BAROSTATS, ChainState, IntegratorState, check_periodic, integrator_state, make_npt,
                  pressure_au, sync_integrator)
