"""What a procedure gets from the command line: the run folder, validated settings, structure and communicator.

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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    run_dir: Path  # absolute
    settings: RunSettings
    geometry: Atoms  # the starting structure from geometry.in (procedures copy it before changing it)
    control: dict[str, Any] | None  # Aims parameters (fhi_al.inputs.aims_parameters) when the reference is aims
    comm: Any  # fhi_al.parallel.world(): SerialComm or MPIComm
    log_level: str = "INFO"
    services: Any = None  # fhi_al.labeling.Services: the reference and the label queue, set by the CLI
    arguments: Any = None  # what a console script asks beyond the run folder (FHI_AL-relabel: a RelabelRequest)

    def with_services(self, services: Any) -> "RunContext":
        return dataclasses.replace(self, services=services)

    def path(self, relative: str | Path) -> Path:
        """A settings path (dataset_dir, model_dir, ...) resolved against the run folder."""
        relative = Path(relative)
        return relative if relative.is_absolute() else self.run_dir / relative
