"""Validation errors per system of a run of several systems: the force MAE of each system's validation frames
(mean over members, as the global metric), in the log, in results/per_system_metrics.json and as one force
parity panel per system (results/<stage>_forces_per_system.png). Stopping still uses the global metric.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms

from ..durable import atomic_write_json
from ..labeling import REF_FORCES_KEY
from ..systems import System, system_of
from .reporting import _pyplot, save_figure

log = logging.getLogger(__name__)

METRICS_FILE = "per_system_metrics.json"


def frames_by_system(frames: Sequence[Atoms], systems: Sequence[System]) -> dict[str, list[Atoms]]:
    """The frames of each system (info["system"]; the only system's for frames without it), in system order."""
    grouped: dict[str, list[Atoms]] = {system.name: [] for system in systems}
    for atoms in frames:
        grouped.setdefault(system_of(atoms, systems), []).append(atoms)
    return grouped


def member_forces(trainer: Any, member: Any, frames: Sequence[Atoms]) -> np.ndarray:
    """[atoms of all frames, 3] forces predicted by `member` (eV/Å)."""
    _, predicted = trainer.predict_labelled(member, list(frames))
    return predicted["forces"].detach().cpu().numpy().reshape(-1, 3)


def forces_mae_by_system(trainer: Any, members: Sequence[Any], frames: Sequence[Atoms],
                         systems: Sequence[System]) -> dict[str, dict[str, Any]]:
    """{system: {"forces_mae": mean over members of their force MAE (eV/Å), "frames": n, and the reference
    and ensemble-mean forces for the parity plot}} over `frames` (validation labels)."""
    table = {}
    for name, subset in frames_by_system(frames, systems).items():
        if not subset:
            table[name] = {"forces_mae": None, "frames": 0}
            continue
        reference = np.concatenate([atoms.arrays[REF_FORCES_KEY] for atoms in subset]).reshape(-1, 3)
        predictions = [member_forces(trainer, member, subset) for member in members]
        maes = [float(np.mean(np.abs(p - reference))) for p in predictions]
        table[name] = {"forces_mae": float(np.mean(maes)), "frames": len(subset), "reference": reference,
                       "ensemble_mean": np.mean(predictions, axis=0)}
    return table


def summary(table: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(f"{name} {_fmt(row['forces_mae'])} ({row['frames']} frames)" for name, row in table.items())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f} eV/Å"


def report(trainer: Any, members: Sequence[Any], frames: Sequence[Atoms], systems: Sequence[System], *,
           results_dir: Path, stage: str, plot: bool = True, **context: Any) -> dict[str, float | None]:
    """Log the per-system validation force MAE, append it to results/per_system_metrics.json (with `context`,
    e.g. round or labels) and draw the parity plot; nothing for a single-system run. -> {system: MAE}."""
    if len(systems) < 2:
        return {}
    table = forces_mae_by_system(trainer, members, frames, systems)
    log.info("%s: validation force MAE per system: %s.", stage, summary(table))
    maes = {name: row["forces_mae"] for name, row in table.items()}
    append_metrics(Path(results_dir) / METRICS_FILE, {"stage": stage, **context, "forces_mae": maes,
                                                      "frames": {n: r["frames"] for n, r in table.items()}})
    if plot:
        parity_plot(table, Path(results_dir) / f"{stage}_forces_per_system.png", title=stage)
    return maes


def append_metrics(path: Path, entry: dict[str, Any]) -> None:
    entries = json.loads(path.read_text()) if path.exists() else []
    atomic_write_json(path, entries + [entry])


def parity_plot(table: Mapping[str, Mapping[str, Any]], path: Path, *, title: str) -> None:
    """One panel per system: ensemble-mean against reference force components, with the system's MAE."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(table), figsize=(4 * len(table), 4), squeeze=False)
    for axis, (name, row) in zip(axes[0], table.items()):
        axis.set_title(f"{name}: MAE {_fmt(row['forces_mae'])}")
        axis.set_xlabel("reference force (eV/Å)")
        axis.set_ylabel("ensemble mean (eV/Å)")
        if row["frames"]:
            reference, predicted = row["reference"].ravel(), row["ensemble_mean"].ravel()
            axis.scatter(reference, predicted, s=4, alpha=0.5)
            low, high = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
            axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
    fig.suptitle(f"{title}: validation forces per system")
    save_figure(fig, path)
    plt.close(fig)
