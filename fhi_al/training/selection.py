"""Which structures a training session uses: outlier filters (max_energy, max_forces), the structures whose
forces enter the loss each epoch (force_fraction) and the featurization cache (per structure content, LRU).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from ase import Atoms

from ..architectures.base import REF_ENERGY_KEY, REF_FORCES_KEY
from ..errors import SettingsError

log = logging.getLogger(__name__)

FORCE_SAMPLINGS = ("random", "fixed")


def structure_key(atoms: Atoms) -> str:
    """Content hash of a labelled structure (geometry, cell and labels): the featurization cache key."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (atoms.numbers, atoms.positions, np.asarray(atoms.cell), atoms.pbc,
                  np.asarray(atoms.info.get(REF_ENERGY_KEY, np.nan), float),
                  np.asarray(atoms.arrays.get(REF_FORCES_KEY, np.zeros(0)), float)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# --- outlier filters ------------------------------------------------------------------------------------
def outlier_mask(atoms_list: Sequence[Atoms], *, max_energy: float | None, max_forces: float | None,
                 atomic_energies: Mapping[int, float] | None) -> np.ndarray:
    """True for structures kept: per-atom energy (E - sum E0)/N <= max_energy (eV/atom; E0 = the given
    atomic energies, else 0) and largest atomic force |F_i| <= max_forces (eV/Å). None = no limit."""
    keep = np.ones(len(atoms_list), dtype=bool)
    for index, atoms in enumerate(atoms_list):
        if max_energy is not None and REF_ENERGY_KEY in atoms.info:
            e0 = sum(atomic_energies.get(int(z), 0.0) for z in atoms.numbers) if atomic_energies else 0.0
            keep[index] &= (float(atoms.info[REF_ENERGY_KEY]) - e0) / len(atoms) <= max_energy
        if max_forces is not None and REF_FORCES_KEY in atoms.arrays:
            keep[index] &= float(np.linalg.norm(atoms.arrays[REF_FORCES_KEY], axis=1).max()) <= max_forces
    return keep


class OutlierFilter:
    """Applies outlier_mask to a member's sets, logging the count whenever it changes."""

    def __init__(self, config: Any):
        self.config = config
        self._logged: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return self.config.max_energy is not None or self.config.max_forces is not None

    def apply(self, atoms_list: Sequence[Atoms], *, label: str) -> list[Atoms]:
        if not self.active:
            return list(atoms_list)
        keep = outlier_mask(atoms_list, max_energy=self.config.max_energy, max_forces=self.config.max_forces,
                            atomic_energies=self.config.atomic_energies)
        dropped = int((~keep).sum())
        if self._logged.get(label) != dropped:
            self._logged[label] = dropped
            log.info("%s: %d of %d structures dropped as outliers (max_energy %s eV/atom, max_forces %s eV/Å)",
                     label, dropped, len(atoms_list), self.config.max_energy, self.config.max_forces)
        return [atoms for atoms, kept in zip(atoms_list, keep) if kept]


# --- force fraction -------------------------------------------------------------------------------------
def force_structure_count(num_structures: int, *, fraction: float, minimum: int) -> int:
    return min(num_structures, max(int(minimum), int(round(fraction * num_structures))))


def force_selection(atoms_list: Sequence[Atoms], *, fraction: float, sampling: str, minimum: int, seed: int,
                    epoch: int, resample_epochs: int) -> np.ndarray | None:
    """0/1 mask [num_structures] of the structures whose forces enter the loss in `epoch` (None = all).
    random: redrawn every `resample_epochs` epochs; fixed: the same structures as long as they are there
    (ranked by a seeded hash of their content). Deterministic in (seed, epoch): restarts repeat it."""
    if fraction >= 1.0:
        return None
    if sampling not in FORCE_SAMPLINGS:
        raise SettingsError(f"got {sampling!r}; allowed: {', '.join(FORCE_SAMPLINGS)}", where="TRAINING.force_sampling")
    count = force_structure_count(len(atoms_list), fraction=fraction, minimum=minimum)
    if sampling == "fixed":
        ranks = [hashlib.blake2b(f"{seed}:{structure_key(a)}".encode(), digest_size=8).hexdigest() for a in atoms_list]
        chosen = np.argsort(ranks)[:count]
    else:
        rng = np.random.default_rng([int(seed), int(epoch) // max(1, int(resample_epochs))])
        chosen = rng.choice(len(atoms_list), size=count, replace=False)
    mask = np.zeros(len(atoms_list))
    mask[chosen] = 1.0
    return mask


# --- featurization cache --------------------------------------------------------------------------------
class SampleCache:
    """Featurized samples keyed by structure content, reused across epochs, sessions and members; a changed
    structure has a new key. Least recently used entries go beyond `max_entries` (None = unbounded)."""

    def __init__(self, featurize: Callable[[Atoms], Any], *, enabled: bool = True, max_entries: int | None = None):
        self.featurize = featurize
        self.enabled = enabled
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, atoms: Atoms) -> bool:
        return structure_key(atoms) in self._entries

    def get(self, atoms: Atoms) -> Any:
        if not self.enabled:
            self.misses += 1
            return self.featurize(atoms)
        key = structure_key(atoms)
        sample = self._entries.get(key)
        if sample is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return sample
        self.misses += 1
        sample = self._entries[key] = self.featurize(atoms)
        if self.max_entries is not None and len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return sample

    def clear(self) -> None:
        self._entries.clear()
