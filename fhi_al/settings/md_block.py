"""The MD section of active_learning_settings.yaml: one block for every trajectory, or (aims-PAX's form) a mapping
from trajectory index to block, checked against ACTIVE_LEARNING.num_trajectories.
"""

from __future__ import annotations

from typing import Any

from ..errors import SettingsError
from . import schema
from .typed import build_section


def _trajectory_index(key: Any) -> int | None:
    """A key of the MD section read as a trajectory index (0, 1, ... or '0', '1', ...), else None."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    text = str(key).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def build_md(raw: Any) -> tuple[schema.MdSettings, dict[int, schema.MdSettings]]:
    """The MD section: one block for every trajectory, or (aims-PAX's form) a mapping trajectory index -> block.

    -> (the plain block or trajectory 0's entry, {index: entry} or {} for a plain block). Keys missing in an
    entry take the schema's defaults (not another entry's values).
    """
    if not isinstance(raw, dict) or not raw:
        return build_section(schema.MdSettings, raw, "MD", accepted_unused=schema.MD_UNUSED), {}
    indices = {key: _trajectory_index(key) for key in raw}
    if all(index is None for index in indices.values()):
        return build_section(schema.MdSettings, raw, "MD", accepted_unused=schema.MD_UNUSED), {}
    keys = [str(key) for key, index in indices.items() if index is None]
    if keys:
        raise SettingsError(f"MD is either one block of settings or a mapping of trajectory indices (0, 1, ...) to "
                            f"blocks, not both: {keys[0]!r} is not a trajectory index", where=f"MD.{keys[0]}")
    entries: dict[int, schema.MdSettings] = {}
    for key, index in sorted(indices.items(), key=lambda item: item[1]):
        if index < 0:
            raise SettingsError(f"got trajectory index {index}; indices count from 0", where=f"MD.{key}")
        if index in entries:
            raise SettingsError(f"trajectory {index} is given twice", where=f"MD.{key}")
        entries[index] = build_section(schema.MdSettings, raw[key], f"MD.{index}",
                                       accepted_unused=schema.MD_UNUSED)
    if 0 not in entries:
        raise SettingsError("the mapping of trajectory indices has no entry for trajectory 0 (it also drives the "
                            "initial dataset's sampling MD)", where="MD")
    return entries[0], entries


def check_md_trajectories(al: schema.AlSettings) -> None:
    """A per-trajectory MD mapping covers exactly the trajectories 0..num_trajectories-1 (as in aims-PAX, a
    trajectory without an entry is an error, not a silent default)."""
    if not al.md_by_trajectory:
        return
    count = al.active_learning.num_trajectories
    beyond = [index for index in al.md_by_trajectory if index >= count]
    if beyond:
        raise SettingsError(f"trajectory {beyond[0]} does not exist: ACTIVE_LEARNING.num_trajectories is {count} "
                            f"(trajectories 0..{count - 1})", where=f"MD.{beyond[0]}")
    missing = [index for index in range(count) if index not in al.md_by_trajectory]
    if missing:
        raise SettingsError(f"no entry for trajectory {', '.join(map(str, missing))}; with MD given per trajectory, "
                            f"every trajectory 0..{count - 1} (ACTIVE_LEARNING.num_trajectories = {count}) needs "
                            f"one", where="MD")
