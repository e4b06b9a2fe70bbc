"""Architectures by name (`ARCHITECTURE.model`), with a did-you-mean error for unknown names.

Looking up a name or its hyperparameter class imports neither torch nor mace, so that validating settings
stays fast; the architecture class itself is imported on demand.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import InputError, SettingsError
from ..settings.typed import suggest

if TYPE_CHECKING:
    from .base import Architecture

# name used in mace_settings.yaml (case-insensitive) -> (package, architecture class, hyperparameter class).
# Each package has hypers.py (torch-free) and model.py.
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "MACE": ("fhi_al.architectures.mace", "MaceArchitecture", "MaceHypers"),
    "ScaleShiftMACE": ("fhi_al.architectures.mace", "MaceArchitecture", "MaceHypers"),
    "aenet": ("fhi_al.architectures.aenet", "AenetArchitecture", "AenetHypers"),
    "alchemical": ("fhi_al.architectures.alchemical", "AlchemicalArchitecture", "AlchemicalHypers"),
    "NequIP": ("fhi_al.architectures.nequip", "NequipArchitecture", "NequipHypers"),
    "ALIGNN": ("fhi_al.architectures.alignn", "AlignnArchitecture", "AlignnHypers"),
}


# Architectures that train on stress (GENERAL.compute_stress); the others have no strain hook and refuse it.
STRESS_ARCHITECTURES = ("MACE", "ScaleShiftMACE")


def trains_stress(name: str) -> bool:
    """True when architecture `name` trains on stress (its class's `trains_stress`)."""
    return canonical_name(name) in STRESS_ARCHITECTURES


def available() -> list[str]:
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    for known in _REGISTRY:
        if known.lower() == str(name).lower():
            return known
    raise SettingsError(f"unknown architecture {name!r}.{suggest(str(name), list(_REGISTRY))} "
                        f"Available: {', '.join(available())}", where="ARCHITECTURE.model")


def hypers_class(name: str) -> type:
    """The typed hyperparameter dataclass of architecture `name` (imports only its hypers module)."""
    package, _, hypers = _REGISTRY[canonical_name(name)]
    return getattr(importlib.import_module(f"{package}.hypers"), hypers)


def get_architecture_class(name: str) -> type["Architecture"]:
    package, architecture, _ = _REGISTRY[canonical_name(name)]
    import mace  # noqa: F401  - mace must be imported before anything imports e3nn

    return getattr(importlib.import_module(f"{package}.model"), architecture)


def load_exported(path) -> tuple["Architecture", object]:
    """(architecture, model) of a model file written by any architecture's `export` (or mace_run_train)."""
    import torch

    import mace  # noqa: F401  - before e3nn

    stored = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(stored, torch.nn.Module) and type(stored).__module__.startswith("mace."):
        from .mace.hypers import MaceHypers
        from .mace.model import MaceArchitecture

        dtype = next(stored.parameters()).dtype
        return MaceArchitecture(MaceHypers(r_max=float(stored.r_max)), dtype=dtype).bind(stored), stored
    for package, _, _ in dict.fromkeys(_REGISTRY.values()):
        if package.endswith(".mace"):
            continue
        try:
            return importlib.import_module(f"{package}.model").load_exported(path)
        except InputError:
            continue
    raise InputError("not a model file of any fhi_al architecture", where=str(path))
