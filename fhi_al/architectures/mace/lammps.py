"""MACE models for LAMMPS (pair_style mace): an exported `{tag}.model` converted with mace's own converter, as
`mace_create_lammps_model` does (LAMMPS_MACE compiled to TorchScript by e3nn), written atomically.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import torch

from ...durable import atomic_write_bytes

log = logging.getLogger(__name__)

LAMMPS_SUFFIX = "-lammps.pt"  # mace_create_lammps_model's name: {model}-lammps.pt
DEFAULT_HEAD = "Default"


def lammps_path(model_path: str | Path) -> Path:
    return Path(f"{model_path}{LAMMPS_SUFFIX}")


def write_lammps_model(model_path: str | Path) -> Path:
    """`{model_path}-lammps.pt`: the float64 model wrapped by mace's LAMMPS_MACE and compiled by e3nn's jit."""
    import mace  # noqa: F401  - before e3nn
    from e3nn.util import jit
    from mace.calculators import LAMMPS_MACE

    model = torch.load(model_path, map_location="cpu", weights_only=False).double().to("cpu")
    heads = list(getattr(model, "heads", [None]))
    head = DEFAULT_HEAD if DEFAULT_HEAD in heads and len(heads) > 1 else None
    lammps_model = LAMMPS_MACE(model, head=head) if head is not None else LAMMPS_MACE(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TorchScript's notes on e3nn's annotations
        compiled = jit.compile(lammps_model)
    target = lammps_path(model_path)
    buffer = io.BytesIO()
    torch.jit.save(compiled, buffer)
    atomic_write_bytes(target, buffer.getvalue())
    log.info("LAMMPS model %s (pair_style mace)", target)
    return target
