"""An ensemble of models of one architecture as an ASE Calculator whose extra results are the uncertainty:
per-member forces, energy variance and the per-atom force spread with its per-structure max and mean.
`EnsembleCalculator.from_run_dir(run_dir)` loads the final models of a finished run.

The neighbour graph of a structure is built once for all members, and several structures (e.g. one per
trajectory) can be evaluated in one batched call with `calculate_batch`; architectures with the hook
`ensemble_predictor` (MACE) evaluate all members as one stacked model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .architectures.base import Architecture
from .errors import InputError
from .memory import keep_freed_memory
from .uncertainty import per_atom_force_spread

log = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
MODEL_GLOB = "*.model"  # Trainer.export's files, model/{tag}.model
DEFAULT_MODEL_DIR = "model"


def ensemble_seeds(seed: int, size: int) -> list[int]:
    """`size` distinct member seeds derived reproducibly from GENERAL.seed (the first one is `seed`)."""
    rng = np.random.default_rng(seed)
    seeds = [int(seed)]
    while len(seeds) < size:
        candidate = int(rng.integers(0, MAX_SEED))
        if candidate not in seeds:
            seeds.append(candidate)
    return seeds


def run_model_paths(run_dir: str | Path) -> list[Path]:
    """The final model files of a run folder: {model_dir}/*.model, model_dir from its mace_settings.yaml."""
    run_dir = Path(run_dir)
    model_dir = DEFAULT_MODEL_DIR
    settings_file = run_dir / "mace_settings.yaml"
    if settings_file.is_file():
        from .settings.loader import load_mace_settings

        model_dir = load_mace_settings(settings_file).general.model_dir
    paths = sorted((run_dir / model_dir).glob(MODEL_GLOB))
    if not paths:
        raise InputError(f"no model files ({MODEL_GLOB}) in {run_dir / model_dir}; has the run exported its models?",
                         where=str(run_dir))
    return paths


class Ensemble:
    """Models of one architecture; from trained members (EMA weights, refreshed when they train) or files."""

    def __init__(self, architecture: Architecture, models: Sequence[torch.nn.Module] = (), *,
                 members: Sequence[Any] = ()):
        if not models and not members:
            raise ValueError("an ensemble needs models or members")
        keep_freed_memory()  # batched predictions reallocate tens of MB per call
        self.architecture = architecture
        self._models = list(models)
        self._members = list(members)
        self._stacked: tuple[list[torch.nn.Module], Any] | None = None

    @classmethod
    def from_members(cls, members: Sequence[Any]) -> "Ensemble":
        return cls(members[0].architecture, members=members)

    @classmethod
    def from_files(cls, paths: Sequence[str | Path]) -> "Ensemble":
        """Model files as written by Trainer.export (any architecture) or mace_run_train."""
        from .training.head import load_exported  # with the engine's shift/scale/ZBL terms when exported

        loaded = [load_exported(path) for path in paths]
        architecture = loaded[0][0]
        models = []
        for _, model in loaded:
            model.eval()
            for param in model.parameters():
                param.requires_grad_(False)
            prepare = getattr(architecture, "prepare_inference", None)
            models.append(prepare(model) if prepare else model)
        return cls(architecture, models)

    @property
    def models(self) -> list[torch.nn.Module]:
        if self._members:
            return [member.inference_model() for member in self._members]
        return self._models

    def _stacked_predictor(self, models: list[torch.nn.Module]):
        """The architecture's evaluator of all members at once (hook `ensemble_predictor`, None if it has none
        or the members do not fit it); rebuilt only when the member models change (e.g. after training)."""
        cached = self._stacked
        if cached is not None and len(cached[0]) == len(models) and all(a is b for a, b in zip(cached[0], models)):
            return cached[1]
        hook = getattr(self.architecture, "ensemble_predictor", None)
        predictor = hook(models) if hook is not None and len(models) > 1 else None
        self._stacked = (list(models), predictor)
        return predictor

    def __len__(self) -> int:
        return len(self._members) or len(self._models)

    def predict(self, atoms_list: Sequence[Atoms], *, stress: bool = False) -> list[dict[str, Any]]:
        """Results (see EnsembleCalculator) of every structure, all members on one batched graph; with
        `stress` (periodic structures, architectures with `predict_stress`) also the stress."""
        arch = self.architecture
        batch = arch.collate([arch.featurize(atoms) for atoms in atoms_list])
        models = self.models
        if stress:
            return self._predict_with_stress(batch, models, atoms_list)
        stacked = self._stacked_predictor(models)
        if stacked is not None:
            energies, forces = stacked(batch)
        else:
            outs = [arch.predict(model, batch, training=False) for model in models]
            energies = torch.stack([out["energy"].detach() for out in outs])
            forces = torch.stack([out["forces"].detach() for out in outs])
        energy = energies.double().numpy()  # [M, K]
        force = forces.double().numpy()  # [M, sum N, 3]
        bounds = np.cumsum([0] + [len(atoms) for atoms in atoms_list])
        return [uncertainty_results(energy[:, k], force[:, bounds[k]:bounds[k + 1]]) for k in range(len(atoms_list))]

    def _predict_with_stress(self, batch, models, atoms_list) -> list[dict[str, Any]]:
        from ase.stress import full_3x3_to_voigt_6_stress

        hook = getattr(self.architecture, "predict_stress", None)
        if hook is None:
            raise NotImplementedError(f"{self.architecture.name} models do not predict stress")
        outs = [hook(model, batch) for model in models]
        energy = np.stack([out["energy"].detach().double().numpy() for out in outs])
        force = np.stack([out["forces"].detach().double().numpy() for out in outs])
        stress = np.stack([out["stress"].detach().double().numpy() for out in outs])  # [M, K, 3, 3]
        bounds = np.cumsum([0] + [len(atoms) for atoms in atoms_list])
        results = []
        for k in range(len(atoms_list)):
            result = uncertainty_results(energy[:, k], force[:, bounds[k]:bounds[k + 1]])
            voigt = np.stack([full_3x3_to_voigt_6_stress(member[k]) for member in stress])
            result.update(stress=voigt.mean(axis=0), stress_comm=voigt)
            results.append(result)
        return results


def uncertainty_results(energy_comm: np.ndarray, forces_comm: np.ndarray) -> dict[str, Any]:
    """Mean energy/forces, per-member values, spreads: the calculator's results of one structure."""
    spread = per_atom_force_spread(forces_comm)
    energy = float(energy_comm.mean())
    return {"energy": energy, "free_energy": energy, "forces": forces_comm.mean(axis=0),
            "energy_comm": energy_comm, "forces_comm": forces_comm, "energy_var": float(energy_comm.var()),
            "forces_var": forces_comm.var(axis=0), "forces_uncertainty_per_atom": spread,
            "forces_uncertainty_max": float(spread.max()), "forces_uncertainty_mean": float(spread.mean())}


class EnsembleCalculator(Calculator):
    """ASE Calculator over an ensemble. Results: energy, free_energy, forces (member means), energy_comm [M],
    forces_comm [M, N, 3], energy_var, forces_var [N, 3], forces_uncertainty_per_atom [N] (the spread the
    active-learning threshold uses) and its per-structure forces_uncertainty_max and forces_uncertainty_mean
    (eV/Å); for periodic structures also stress (member mean, Voigt, eV/Å³) and stress_comm [M, 6]."""

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energy_comm", "forces_comm",
                              "energy_var", "forces_var", "forces_uncertainty_per_atom", "forces_uncertainty_max",
                              "forces_uncertainty_mean", "stress_comm"]

    def __init__(self, ensemble: Ensemble | Sequence[Any], **kwargs):
        super().__init__(**kwargs)
        if not isinstance(ensemble, Ensemble):
            ensemble = Ensemble.from_members(list(ensemble))
        self.ensemble = ensemble

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], **kwargs) -> "EnsembleCalculator":
        return cls(Ensemble.from_files(paths), **kwargs)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, **kwargs) -> "EnsembleCalculator":
        """The final members of a finished run: every {model_dir}/*.model of `run_dir` (model_dir from its
        mace_settings.yaml, default model/)."""
        paths = run_model_paths(run_dir)
        log.info("ensemble of %d models from %s", len(paths), paths[0].parent)
        return cls.from_files(paths, **kwargs)

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        stress = "stress" in (properties or ()) or "stress_comm" in (properties or ())
        if stress and not (self.atoms.pbc.any() and self.atoms.cell.volume > 0.0):
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a periodic structure with a cell")
        self.results = self.ensemble.predict([self.atoms], stress=stress)[0]

    def calculate_batch(self, atoms_list: Sequence[Atoms]) -> list[dict[str, Any]]:
        """Results of several structures in one call (one batched graph per member)."""
        return self.ensemble.predict(list(atoms_list))
