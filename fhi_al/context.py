"""What a procedure gets from the command line: the run folder, validated settings, systems and communicator.

Built by `fhi_al.cli` only after every input has been validated; procedures take it as their one argument.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from .settings.schema import RunSettings
from .systems import System

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    run_dir: Path  # absolute
    settings: RunSettings
    systems: tuple[System, ...]  # the starting structures (MISC.path_to_geometry); procedures copy before changing
    comm: Any  # fhi_al.parallel.world(): SerialComm or MPIComm
    log_level: str = "INFO"
    services: Any = None  # fhi_al.labeling.Services: the reference and the label queue, set by the CLI
    arguments: Any = None  # what a console script asks beyond the run folder (FHI_AL-relabel: a RelabelRequest)

    @property
    def geometry(self) -> Atoms:
        """The structure of a single-system run (the first system's otherwise)."""
        return self.systems[0].atoms

    @property
    def control(self) -> dict[str, Any] | None:
        """Aims parameters of the first system (None unless the reference is aims); each System has its own."""
        return self.systems[0].control

    def system_controls(self) -> dict[str, dict[str, Any]] | None:
        """{system name: Aims parameters} for the aims reference, which picks them by atoms.info["system"]."""
        if self.systems[0].control is None:
            return None
        return {system.name: system.control for system in self.systems}

    def with_services(self, services: Any) -> "RunContext":
        return dataclasses.replace(self, services=services)

    def path(self, relative: str | Path) -> Path:
        """A settings path (dataset_dir, model_dir, ...) resolved against the run folder."""
        relative = Path(relative)
        return relative if relative.is_absolute() else self.run_dir / relative
