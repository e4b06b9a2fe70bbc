"""The settings of FHI_AL-relabel: the run's settings with the reference of another settings file (its
REFERENCE section and the ACTIVE_LEARNING/MISC keys that locate an FHI-aims reference or set how it runs).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from . import schema
from .loader import _resolve_paths, _with_file, check_consistency, load_al_settings, read_yaml
from ..errors import SettingsError

log = logging.getLogger(__name__)

# ACTIVE_LEARNING keys of the reference settings file that replace the run's when the file gives them
REFERENCE_KEYS = ("species_dir", "aims_lib_path", "parallel", "reference_group_size", "reference_timeout_s")


def given_keys(raw: dict, section: str) -> set[str]:
    values = raw.get(section) or {}
    return {str(key) for key in values} if isinstance(values, dict) else set()


def reference_settings(settings: schema.RunSettings, path: Path) -> schema.RunSettings:
    """`settings` with the reference of the file `path` (InputError/SettingsError naming the file and key)."""
    raw = read_yaml(path)
    if "REFERENCE" not in raw:
        raise SettingsError("a reference settings file needs a REFERENCE section (e.g. REFERENCE: {calculator: "
                            "xtb, xtb: {method: GFN1-xTB}})", where=str(path))
    new = _resolve_paths(load_al_settings(path), path.parent)
    try:
        check_consistency(dataclasses.replace(new, active_learning=dataclasses.replace(
            new.active_learning, initial_sampling="aimd")))  # only the reference's keys matter here
    except SettingsError as error:
        raise _with_file(error, path) from None
    given = given_keys(raw, "ACTIVE_LEARNING") & set(REFERENCE_KEYS)
    active = dataclasses.replace(settings.al.active_learning,
                                 **{key: getattr(new.active_learning, key) for key in given})
    misc = settings.al.misc
    if "path_to_control" in given_keys(raw, "MISC"):
        misc = dataclasses.replace(misc, path_to_control=new.misc.path_to_control)
    al = dataclasses.replace(settings.al, reference=new.reference, active_learning=active, misc=misc)
    return dataclasses.replace(settings, al=al)
