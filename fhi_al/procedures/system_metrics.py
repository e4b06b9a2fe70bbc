"""Validation errors per system: the force MAE of each system's validation frames (mean over members, as the
global metric) with the reference calls paid so far, in results/per_system_metrics.json, drawn as the learning
curve per system (results/learning_curve_per_system.png; one line for a single system) and, with several
systems, in the log and as one force parity panel per system. Stopping still uses the global metric.
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
from ..logs import DETAIL
from ..references.ledger import ReferenceCost
from ..systems import System, system_of
from .reporting import _pyplot, save_figure

log = logging.getLogger(__name__)

METRICS_FILE = "per_system_metrics.json"
CURVE_FILE = "learning_curve_per_system.png"


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
           results_dir: Path, stage: str, plot: bool = True, ledger: Path | None = None, console: bool = True,
           **context: Any) -> dict[str, float | None]:
    """Append the per-system validation force MAE to results/per_system_metrics.json (with `context`, e.g.
    round or labels, and the reference calls paid and labels stored so far from `ledger`) and log it (on the
    console only for several systems and `console`); several systems and `plot`: the parity plot. -> {system: MAE}."""
    table = forces_mae_by_system(trainer, members, frames, systems)
    several = len(systems) > 1
    log.info("%s: validation force MAE per system: %s.", stage, summary(table),
             extra=None if several and console else DETAIL)
    maes = {name: row["forces_mae"] for name, row in table.items()}
    entry = {"stage": stage, **context, "forces_mae": maes, "frames": {n: r["frames"] for n, r in table.items()}}
    if ledger is not None:
        cost = ReferenceCost.from_ledger(ledger)
        entry.update(reference_calls=cost.paid, labels_stored=cost.labels)
    append_metrics(Path(results_dir) / METRICS_FILE, entry)
    if plot and several:
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


def read_curve(path: Path) -> dict[str, list[tuple[str, int, int | None, float]]]:
    """{system: [(stage, reference calls, labels stored, force MAE eV/Å)]} from per_system_metrics.json, in
    file order; entries without reference calls (written before they were recorded), without an MAE or
    repeating the previous point are left out."""
    curves: dict[str, list[tuple[str, int, int | None, float]]] = {}
    for entry in json.loads(Path(path).read_text()) if Path(path).is_file() else []:
        if entry.get("reference_calls") is None:
            continue
        for name, mae in entry["forces_mae"].items():
            point = (entry["stage"], int(entry["reference_calls"]), entry.get("labels_stored"), mae)
            points = curves.setdefault(name, [])
            if mae is not None and (not points or points[-1] != point):  # the final round is reported twice
                points.append((*point[:3], float(mae)))
    return curves


def learning_curve_plot(metrics_path: Path, path: Path) -> bool:
    """Validation force MAE per system (log y) against reference calls paid (top panel) and against labels
    stored (bottom panel), the initial dataset solid and active learning dashed. -> whether it was drawn."""
    curves = read_curve(metrics_path)
    if not curves:
        return False
    plt = _pyplot()
    fig, (by_calls, by_labels) = plt.subplots(2, 1, figsize=(7, 7))
    for index, (name, points) in enumerate(curves.items()):
        color = f"C{index}"
        for stage, style in (("initial", "o-"), ("al", "s--")):
            mine = [p for p in points if p[0] == stage]
            if not mine:
                continue
            label = f"{name} ({'initial dataset' if stage == 'initial' else 'active learning'})"
            by_calls.semilogy([p[1] for p in mine], [p[3] for p in mine], style, color=color, ms=3, label=label)
            with_labels = [p for p in mine if p[2] is not None]
            by_labels.semilogy([p[2] for p in with_labels], [p[3] for p in with_labels], style, color=color, ms=3)
    al_start = [p for points in curves.values() for p in points if p[0] == "al"]
    if al_start:  # the phase boundary: the first entry of active learning
        by_calls.axvline(al_start[0][1], color="grey", lw=0.8, ls=":")
        if al_start[0][2] is not None:
            by_labels.axvline(al_start[0][2], color="grey", lw=0.8, ls=":")
    for axis, xlabel in ((by_calls, "reference calls paid"), (by_labels, "labels stored")):
        axis.set_xlabel(xlabel)
        axis.set_ylabel("validation force MAE (eV/Å)")
        axis.grid(True, which="both", alpha=0.3)
    by_calls.legend(fontsize=7)
    by_calls.set_title("Learning curve per system")
    save_figure(fig, path)
    plt.close(fig)
    return True
