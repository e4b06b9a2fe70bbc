"""Temperature replica exchange between MLFF trajectories (parallel tempering).

Trajectories of the same system are ordered by temperature into a ladder. Every `interval_steps` MD steps each
pair of neighbours (alternating even and odd pairs, so that every configuration can walk the whole ladder)
tries to swap configurations with the Metropolis probability

    P = min(1, exp[(1/k_B T_i − 1/k_B T_j)(E_i − E_j)]),

E the potential energy of each configuration on the ensemble mean (the model's own energy, no bias). An accepted
swap exchanges positions and cell; the momenta travel with their configuration, rescaled by √(T_new/T_old)
so that each trajectory keeps its thermostat's temperature (Sugita and Okamoto's rule).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Collection, Sequence

import numpy as np
from ase import Atoms, units

log = logging.getLogger(__name__)

STATE_VERSION = 1


def acceptance_probability(energy_i_eV: float, energy_j_eV: float, temperature_i_K: float,
                           temperature_j_K: float) -> float:
    """Metropolis probability of swapping the configurations of replicas i and j."""
    exponent = (1.0 / (units.kB * temperature_i_K) - 1.0 / (units.kB * temperature_j_K)) * (energy_i_eV - energy_j_eV)
    return 1.0 if exponent >= 0.0 else math.exp(exponent)


def ladders(temperatures_K: Sequence[float], groups: Sequence[Any]) -> list[list[int]]:
    """Trajectory indices per group (e.g. per system), each ordered by temperature; ladders of one are left out."""
    by_group: dict[Any, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    result = []
    for members in by_group.values():
        if len(members) > 1:
            result.append(sorted(members, key=lambda index: (temperatures_K[index], index)))
    return result


def swap_configurations(atoms_i: Atoms, atoms_j: Atoms, temperature_i_K: float, temperature_j_K: float) -> None:
    """Exchange positions and cells of two replicas; each keeps its momenta, rescaled to its own temperature
    (the momenta of configuration j arrive at temperature i as √(T_i/T_j) p_j)."""
    positions_i, positions_j = atoms_i.get_positions(), atoms_j.get_positions()
    cell_i, cell_j = atoms_i.get_cell().array.copy(), atoms_j.get_cell().array.copy()
    momenta_i, momenta_j = atoms_i.get_momenta(), atoms_j.get_momenta()
    atoms_i.set_cell(cell_j)
    atoms_j.set_cell(cell_i)
    atoms_i.set_positions(positions_j)
    atoms_j.set_positions(positions_i)
    atoms_i.set_momenta(momenta_j * math.sqrt(temperature_i_K / temperature_j_K))
    atoms_j.set_momenta(momenta_i * math.sqrt(temperature_j_K / temperature_i_K))


@dataclass
class PairStatistics:
    attempts: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.attempts if self.attempts else None


@dataclass
class ReplicaExchange:
    """Bookkeeping of the exchanges: when the next attempt is due, which parity of pairs goes next, and the
    attempts and acceptances of each pair (keys "i-j" of trajectory indices)."""

    interval_steps: int
    next_step: int = 0
    parity: int = 0
    pairs: dict[str, PairStatistics] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.next_step == 0:
            self.next_step = self.interval_steps

    def due(self, steps: Sequence[int]) -> bool:
        """Every trajectory of the ladder has reached the next exchange step."""
        return self.interval_steps > 0 and bool(steps) and min(steps) >= self.next_step

    def round_pairs(self, ladder: Sequence[int]) -> list[tuple[int, int]]:
        """The neighbour pairs of this round's parity (a ladder of two has one pair, tried every round)."""
        positions = range(self.parity, len(ladder) - 1, 2) or range(0, len(ladder) - 1, 2)
        return [(ladder[position], ladder[position + 1]) for position in positions]

    def attempt(self, ladder: Sequence[int], energies_eV: dict[int, float], temperatures_K: Sequence[float],
                atoms: dict[int, Atoms], rng: np.random.Generator,
                allowed: Collection[tuple[int, int]] | None = None) -> list[tuple[int, int, bool]]:
        """One round of attempts on the neighbour pairs of this round's parity (only those in `allowed`, when
        given); -> (i, j, accepted) each."""
        outcomes = []
        for i, j in self.round_pairs(ladder):
            if allowed is not None and (i, j) not in allowed:
                continue
            probability = acceptance_probability(energies_eV[i], energies_eV[j], temperatures_K[i], temperatures_K[j])
            accepted = bool(rng.random() < probability)
            statistics = self.pairs.setdefault(f"{i}-{j}", PairStatistics())
            statistics.attempts += 1
            if accepted:
                statistics.accepted += 1
                swap_configurations(atoms[i], atoms[j], temperatures_K[i], temperatures_K[j])
            outcomes.append((i, j, accepted))
        return outcomes

    def advance(self, step: int | None = None) -> None:
        """After a round at MD step `step` (the lowest of the ladder's running trajectories): the other parity
        next, at the first multiple of the interval after it, so that trajectories that fell behind (waiting for
        a label, training) do not trigger a burst of rounds while they catch up."""
        self.parity = 1 - self.parity
        reached = self.next_step if step is None else max(step, self.next_step)
        self.next_step = (reached // self.interval_steps + 1) * self.interval_steps

    def summary(self) -> dict[str, dict[str, Any]]:
        return {pair: {"attempts": s.attempts, "accepted": s.accepted, "acceptance": s.acceptance}
                for pair, s in sorted(self.pairs.items())}

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "interval_steps": self.interval_steps, "next_step": self.next_step,
                "parity": self.parity,
                "pairs": {pair: [s.attempts, s.accepted] for pair, s in self.pairs.items()}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], interval_steps: int) -> "ReplicaExchange":
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"replica exchange state version {state.get('version')!r}, expected {STATE_VERSION}")
        exchange = cls(interval_steps, next_step=int(state["next_step"]), parity=int(state["parity"]))
        exchange.pairs = {pair: PairStatistics(int(a), int(b)) for pair, (a, b) in state["pairs"].items()}
        return exchange
