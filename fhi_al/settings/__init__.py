"""Settings of a run: typed sections (schema), YAML reading and validation (loader), example files (examples).

`load_run_settings(run_dir)` is the one entry point procedures use; everything it returns is frozen.
"""

from .loader import load_run_settings, normalise_atomic_energies, read_yaml
from .schema import (AL_SETTINGS_FILE, MACE_SETTINGS_FILE, AlSettings, ArchitectureSettings, MaceSettings,
                     RunSettings)

__all__ = ["AL_SETTINGS_FILE", "MACE_SETTINGS_FILE", "AlSettings", "ArchitectureSettings", "MaceSettings",
           "RunSettings", "load_run_settings", "normalise_atomic_energies", "read_yaml"]
