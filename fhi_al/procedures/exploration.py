"""Exploration of the active-learning trajectories beyond equilibrium MD: the biases each trajectory moves on
(uncertainty-driven dynamics, collective-variable metadynamics, a PLUMED input) and temperature replica exchange
between trajectories. The physics lives in fhi_al.md (bias, metadynamics, exchange); this module only builds it
from the settings, attaches it to the trajectories and keeps its restart state and reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..durable import atomic_write_json
from ..errors import InputError
from ..logs import DETAIL
from ..md import sync_integrator
from ..md.bias import UNCERTAINTY, BiasedCalculator, UncertaintyBias, model_results
from ..md.colvars import CollectiveVariable
from ..md.exchange import ReplicaExchange, ladders
from ..md.metadynamics import Metadynamics
from ..restart import restore_rng, rng_state
from ..settings.md_schema import MdSettings
from ..settings.schema import AlSettings
from ..systems import System, system_of
from .trajectories import RUNNING, Trajectory

log = logging.getLogger(__name__)

HILLS_FOLDER = Path("restart") / "al"
EXCHANGE_FILE = "replica_exchange.json"
DEFAULT_BIAS_WIDTH_eV = 0.01  # B before the first calibration when bias_width is null (eV per √atom)


def hills_path(run_dir: Path, trajectory: int) -> Path:
    return Path(run_dir) / HILLS_FOLDER / f"hills_{trajectory}.jsonl"


@dataclass
class TrajectoryBias:
    """The biases of one trajectory (any may be None) and the calculator that adds them."""

    uncertainty: UncertaintyBias | None = None
    metadynamics: Metadynamics | None = None
    width_fixed: bool = True  # bias_width given by the user; else refreshed from the validation frames

    @property
    def terms(self) -> list[Any]:
        return [term for term in (self.uncertainty, self.metadynamics) if term is not None]


def make_metadynamics(md: MdSettings, path: Path) -> Metadynamics:
    """The settings' metadynamics with every hill the trajectory deposited before a restart."""
    settings = md.metadynamics
    cvs = [CollectiveVariable(kind, tuple(int(i) for i in atoms)) for cv in settings.cvs for kind, atoms in cv.items()]
    metadynamics = Metadynamics(cvs, height_eV=settings.height, sigma=settings.sigmas(), pace_steps=settings.pace,
                                biasfactor=settings.biasfactor, temperature_K=md.temperature, hills_path=path)
    metadynamics.load_hills()
    return metadynamics


def plumed_calculator(md: MdSettings, base: Any, trajectory: Trajectory, run_dir: Path) -> Any:
    """ASE's Plumed calculator around `base`, reading the PLUMED input of `md.plumed` (InputError naming the key
    when the kernel cannot be loaded)."""
    from ase import units
    from ase.calculators.plumed import Plumed

    path = Path(md.plumed) if Path(md.plumed).is_absolute() else Path(run_dir) / md.plumed
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return Plumed(calc=base, input=lines, timestep=md.timestep * units.fs, atoms=trajectory.atoms,
                      kT=units.kB * md.temperature, log=str(Path(run_dir) / f"plumed_{trajectory.index}.log"))
    except Exception as error:  # noqa: BLE001 - a missing kernel shows up here as any kind of error
        raise InputError(f"PLUMED could not start ({type(error).__name__}: {error}); check the PLUMED kernel "
                         f"(PLUMED_KERNEL) or use the built-in metadynamics", where="MD.plumed") from None


def attach_biases(trajectories: Sequence[Trajectory], settings: AlSettings, run_dir: Path) -> dict[int, TrajectoryBias]:
    """Give every biased trajectory its biases: its atoms move on a BiasedCalculator over the shared ensemble
    calculator, its metadynamics deposits hills through an observer of its dynamics."""
    biases: dict[int, TrajectoryBias] = {}
    for trajectory in trajectories:
        md = settings.md_settings_for(trajectory.index)
        if not md.biased:
            continue
        base = trajectory.atoms.calc
        if md.plumed is not None:
            trajectory.atoms.calc = plumed_calculator(md, base, trajectory, run_dir)
            log.info("trajectory %d: PLUMED input %s", trajectory.index, md.plumed)
            continue
        bias = TrajectoryBias(width_fixed=md.bias_width is not None)
        if md.bias == UNCERTAINTY:
            bias.uncertainty = UncertaintyBias(strength_eV=md.bias_strength,
                                               width_eV=md.bias_width or DEFAULT_BIAS_WIDTH_eV)
        if md.metadynamics is not None:
            bias.metadynamics = make_metadynamics(md, hills_path(run_dir, trajectory.index))
            _attach_deposits(trajectory, bias.metadynamics)
        trajectory.atoms.calc = BiasedCalculator(base, bias.terms)
        biases[trajectory.index] = bias
        log.info("trajectory %d: %s", trajectory.index, describe_bias(md, bias))
    return biases


def _attach_deposits(trajectory: Trajectory, metadynamics: Metadynamics) -> None:
    """Deposit the hills as the MD runs; a new hill refreshes the cached bias forces of the frame."""
    dynamics = trajectory.dynamics

    def deposit() -> None:
        if metadynamics.maybe_deposit(dynamics.atoms, dynamics.step) is not None:
            refresh = getattr(dynamics.atoms.calc, "refresh_bias", None)
            if refresh is not None:
                refresh()

    dynamics.dyn.attach(deposit, interval=1)


def describe_bias(md: MdSettings, bias: TrajectoryBias) -> str:
    parts = []
    if bias.uncertainty is not None:
        width = f"{md.bias_width} eV" if md.bias_width is not None else "from the validation frames"
        parts.append(f"uncertainty bias, depth {md.bias_strength} eV, width {width}")
    if bias.metadynamics is not None:
        settings = md.metadynamics
        kind = f"well-tempered (γ = {settings.biasfactor})" if settings.biasfactor else "plain"
        parts.append(f"{kind} metadynamics on {', '.join(cv.describe() for cv in bias.metadynamics.cvs)}, hills of "
                     f"{settings.height} eV every {settings.pace} steps ({len(bias.metadynamics)} so far)")
    return "; ".join(parts)


def refresh_widths(biases: dict[int, TrajectoryBias], width_eV: float) -> None:
    """Uncertainty biases without a user's bias_width take the width measured on the validation frames."""
    changed = False
    for bias in biases.values():
        if bias.uncertainty is not None and not bias.width_fixed:
            changed = changed or bias.uncertainty.width_eV != width_eV
            bias.uncertainty.width_eV = width_eV
    if changed:
        log.info("uncertainty bias width %.4g eV per √atom (twice the RMS energy spread on the validation frames)",
                 width_eV, extra=DETAIL)


def bias_record(trajectory: Trajectory) -> dict[str, float]:
    """The bias energy and its largest per-atom force at the current frame (for the uncertainty checks)."""
    results = trajectory.atoms.calc.results
    if "bias_energy" not in results:
        return {}
    forces = np.asarray(results["bias_forces"])
    widths = [term.width_eV for term in getattr(trajectory.atoms.calc, "biases", []) if hasattr(term, "width_eV")]
    return {"bias_energy_eV": float(results["bias_energy"]), **({"bias_width_eV": widths[0]} if widths else {}),
            "bias_force_max_eV_per_A": float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0}


# ---------------------------------------------------------------------------------------------- replica exchange
@dataclass
class Exchanges:
    """Temperature replica exchange among the unbiased trajectories (ladders per system and ensemble)."""

    exchange: ReplicaExchange
    ladders: list[list[int]]
    temperatures_K: list[float]
    rng: np.random.Generator

    def state_dict(self) -> dict[str, Any]:
        return {"exchange": self.exchange.state_dict(), "rng": rng_state(self.rng)}


def make_exchanges(trajectories: Sequence[Trajectory], settings: AlSettings, systems: Sequence[System],
                   saved: dict[str, Any] | None, seed: int) -> Exchanges | None:
    """The exchanges of ACTIVE_LEARNING.replica_exchange_steps (None when off or when no ladder has two rungs)."""
    interval = settings.active_learning.replica_exchange_steps
    if interval <= 0:
        return None
    temperatures, groups = [], []
    for trajectory in trajectories:
        md = settings.md_settings_for(trajectory.index)
        temperatures.append(md.temperature)
        groups.append(None if md.biased else (system_of(trajectory.atoms, systems), md.stat_ensemble, md.pressure))
    found = [ladder for ladder in ladders(temperatures, groups)
             if groups[ladder[0]] is not None and len({temperatures[i] for i in ladder}) > 1]
    if not found:
        log.warning("replica_exchange_steps = %d but no two unbiased trajectories of one system have different "
                    "temperatures: no exchanges (give MD per trajectory with a temperature ladder)", interval)
        return None
    if saved:
        exchange = ReplicaExchange.from_state_dict(saved["exchange"], interval)
        rng = restore_rng(saved["rng"])
    else:
        exchange, rng = ReplicaExchange(interval), np.random.default_rng(seed)
    for ladder in found:
        log.info("replica exchange every %d MD steps along trajectories %s at %s K.", interval,
                 " - ".join(map(str, ladder)), " - ".join(f"{temperatures[i]:g}" for i in ladder))
    return Exchanges(exchange, found, temperatures, rng)


def exchange_if_due(exchanges: Exchanges, trajectories: Sequence[Trajectory]) -> bool:
    """One round of swaps once every running trajectory of the ladders has reached the next exchange step.
    Only pairs whose two trajectories are running (not waiting for a label, training or finished) are tried; a
    round in which no pair could be tried stays due, so a busy ladder exchanges as soon as a pair is free."""
    members = [trajectories[i] for ladder in exchanges.ladders for i in ladder]
    running = [t for t in members if t.status == RUNNING]
    if not running or not exchanges.exchange.due([t.step for t in running]):
        return False
    tried = False
    for ladder in exchanges.ladders:
        active = [i for i in ladder if trajectories[i].status == RUNNING]
        energies = {i: model_results(_fresh_results(trajectories[i]))[0] for i in active}
        free = {(a, b) for a, b in zip(ladder, ladder[1:]) if a in energies and b in energies}
        atoms = {i: trajectories[i].atoms for i in energies}
        outcomes = exchanges.exchange.attempt(ladder, energies, exchanges.temperatures_K, atoms, exchanges.rng,
                                              allowed=free)
        for i, j, accepted in outcomes:
            tried = True
            if accepted:
                for index in (i, j):
                    _after_swap(trajectories[index])
            log.info("replica exchange %d <-> %d at step %d: %s", i, j, trajectories[i].step,
                     "accepted" if accepted else "rejected", extra=DETAIL)
    if tried:
        exchanges.exchange.advance(min(t.step for t in running))
    return tried


def _fresh_results(trajectory: Trajectory) -> dict[str, Any]:
    trajectory.atoms.get_potential_energy()  # cached when the calculator already holds this frame
    return trajectory.atoms.calc.results


def _after_swap(trajectory: Trajectory) -> None:
    """A swapped configuration is the trajectory's new last good frame; NPT chains restart at rest."""
    sync_integrator(trajectory.dynamics.dyn, None)
    if trajectory.atoms.calc is not None:
        trajectory.atoms.calc.reset()
    trajectory.dynamics.last_good.record(trajectory.atoms, step=trajectory.step)


def write_exchange_report(exchanges: Exchanges | None, results_dir: Path) -> None:
    """results/replica_exchange.json and one log line per pair: attempts and acceptance."""
    if exchanges is None:
        return
    summary = exchanges.exchange.summary()
    atomic_write_json(Path(results_dir) / EXCHANGE_FILE,
                      {"interval_steps": exchanges.exchange.interval_steps, "ladders": exchanges.ladders,
                       "temperatures_K": exchanges.temperatures_K, "pairs": summary})
    for pair, record in summary.items():
        i, j = (int(part) for part in pair.split("-"))
        acceptance = "n/a" if record["acceptance"] is None else f"{100 * record['acceptance']:.0f} %"
        log.info("Replica exchange %s (%g K <-> %g K): %d attempts, acceptance %s.", pair, exchanges.temperatures_K[i],
                 exchanges.temperatures_K[j], record["attempts"], acceptance)
