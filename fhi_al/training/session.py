"""Pieces of one training session around the engine's loop: batches (optionally collated by worker
processes), running training errors per epoch, and the session's report (predictions, plots) in results/.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from . import plots, reports

log = logging.getLogger(__name__)

CURVES_SUFFIX = "_curves.png"
PARITY_SUFFIX = "_parity.png"
PREDICTIONS_INFIX = "_predictions_"


class RunningErrors:
    """Loss and squared errors of the batches of one epoch (training weights, before each step)."""

    def __init__(self):
        self.losses: list[float] = []
        self.energy_sq = self.forces_sq = 0.0
        self.structures = self.components = 0

    def add(self, loss: float, targets: Any, pred: dict[str, torch.Tensor]) -> None:
        self.losses.append(loss)
        num_atoms = (targets.ptr[1:] - targets.ptr[:-1]).to(targets.energy.dtype)
        self.energy_sq += float((((pred["energy"] - targets.energy) / num_atoms) ** 2).sum())
        self.forces_sq += float(((pred["forces"] - targets.forces) ** 2).sum())
        self.structures += len(num_atoms)
        self.components += targets.forces.numel()

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses)

    def summary(self) -> dict[str, float]:
        return {"energy_rmse_per_atom": math.sqrt(self.energy_sq / max(1, self.structures)),
                "forces_rmse": math.sqrt(self.forces_sq / max(1, self.components))}


class _Collate:
    """Picklable collate function for worker processes."""

    def __init__(self, architecture: Any, samples: Sequence[Any]):
        self.architecture, self.samples = architecture, samples

    def __call__(self, indices: list[list[int]]):
        return self.architecture.collate([self.samples[i] for i in indices[0]])


def batches(architecture: Any, samples: Sequence[Any], index_batches: list[list[int]],
            num_workers: int) -> Iterator[Any]:
    """Collated batches of `samples` in the order of `index_batches`. With num_workers > 0 a torch
    DataLoader collates them in that many worker processes while the main process trains (on CPU this
    overlaps only the collation; the samples themselves come from the main process's cache)."""
    if num_workers <= 0:
        for chosen in index_batches:
            yield architecture.collate([samples[i] for i in chosen])
        return
    loader = torch.utils.data.DataLoader(index_batches, batch_size=1, shuffle=False, num_workers=num_workers,
                                         collate_fn=_Collate(architecture, samples))
    yield from loader


def report(trainer: Any, member: Any) -> None:
    """After a training session: predictions of the training and validation sets (write_predictions) and
    the learning curves and parity plot (training_plots) in results/."""
    config = trainer.config
    if not (config.write_predictions or config.training_plots):
        return
    results = trainer.run_dir / config.results_dir
    sets = {"train": trainer.train_set(member), "valid": trainer.valid_set(member)}
    parity = {}
    for name, atoms_list in sets.items():
        if not atoms_list:
            continue
        targets, pred = trainer.predict_labelled(member, atoms_list)
        energies, forces = pred["energy"].double().numpy(), pred["forces"].double().numpy()
        if config.write_predictions:
            reports.write_predictions(atoms_list, energies, forces, stem=results / f"{member.tag}{PREDICTIONS_INFIX}{name}")
        num_atoms = np.array([len(a) for a in atoms_list], dtype=float)
        parity[name] = (targets.energy.double().numpy() / num_atoms, energies / num_atoms,
                        targets.forces.double().numpy(), forces)
    if config.training_plots:
        records = plots.read_history(trainer.history_path(member.tag))
        if records:
            plots.plot_session_curves(records, results / f"{member.tag}{CURVES_SUFFIX}")
        if parity:
            plots.plot_parity(parity, results / f"{member.tag}{PARITY_SUFFIX}")
