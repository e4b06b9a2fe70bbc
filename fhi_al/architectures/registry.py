"""Architectures by name (`ARCHITECTURE.model`), with a did-you-mean error for unknown names."""

from __future__ import annotations

import importlib

from ..errors import SettingsError
from ..settings.typed import suggest
from .base import Architecture

# name used in mace_settings.yaml (case-insensitive) -> "module:class"
_REGISTRY: dict[str, str] = {
    "MACE": "fhi_al.architectures.mace.model:MaceArchitecture",
    "ScaleShiftMACE": "fhi_al.architectures.mace.model:MaceArchitecture",
    "aenet": "fhi_al.architectures.aenet.model:AenetArchitecture",
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    for known in _REGISTRY:
        if known.lower() == str(name).lower():
            return known
    raise SettingsError(f"unknown architecture {name!r}.{suggest(str(name), list(_REGISTRY))} "
                        f"Available: {', '.join(available())}", where="ARCHITECTURE.model")


def get_architecture_class(name: str) -> type[Architecture]:
    module_name, class_name = _REGISTRY[canonical_name(name)].split(":")
    if module_name.startswith("fhi_al.architectures.mace"):
        import mace  # noqa: F401  - mace must be imported before anything imports e3nn
    return getattr(importlib.import_module(module_name), class_name)
