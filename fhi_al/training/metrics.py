"""Errors of predictions against reference labels: the loss (mace's weighted energy/forces formula, plus mace's
stress and virials terms when stress is trained) and per-atom energy, force and stress MAE/RMSE. Pure functions
of tensors, shared by training, validation and tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from mace.modules.loss import WeightedEnergyForcesLoss, weighted_mean_squared_stress

log = logging.getLogger(__name__)


@dataclass
class LossTargets:
    """The reference side of mace's loss functions (they read ptr, weights and ['energy'], ['forces'])."""

    energy: torch.Tensor
    forces: torch.Tensor
    ptr: torch.Tensor
    weight: torch.Tensor
    energy_weight: torch.Tensor
    forces_weight: torch.Tensor
    stress: torch.Tensor | None = None  # [S, 3, 3] eV/Å³ (batches of architectures that train stress)
    stress_weight: torch.Tensor | None = None  # [S]: 0 for a structure without reference stress
    volume: torch.Tensor | None = None  # [S] Å³

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)

    @classmethod
    def from_batch(cls, batch) -> "LossTargets":
        ones = torch.ones_like(batch.energy_eV)
        ptr = torch.cat([batch.num_atoms.new_zeros(1), torch.cumsum(batch.num_atoms, 0)])
        return cls(energy=batch.energy_eV, forces=batch.forces_eV_per_A, ptr=ptr, weight=ones,
                   energy_weight=batch.energy_weight if batch.energy_weight is not None else ones,
                   forces_weight=batch.forces_weight if batch.forces_weight is not None else ones,
                   stress=getattr(batch, "stress_eV_per_A3", None), stress_weight=getattr(batch, "stress_weight", None),
                   volume=getattr(batch, "volume_A3", None))

    def with_force_mask(self, mask: torch.Tensor | None) -> "LossTargets":
        """These targets with the forces term of structures where `mask` [num_structures] is 0 switched off
        and the others up-weighted by (all atoms)/(selected atoms), so the term keeps its scale."""
        if mask is None:
            return self
        num_atoms = (self.ptr[1:] - self.ptr[:-1]).to(self.weight.dtype)
        mask = mask.to(self.weight.dtype)
        selected = float((mask * num_atoms).sum())
        factor = float(num_atoms.sum()) / selected if selected > 0 else 0.0
        return replace(self, forces_weight=self.forces_weight * mask * factor)

    def scaled(self, factors: torch.Tensor | None) -> "LossTargets":
        """These targets with every structure's loss weight multiplied by `factors` [num_structures]."""
        if factors is None:
            return self
        return replace(self, weight=self.weight * factors.to(self.weight.dtype))

    @classmethod
    def concatenate(cls, parts: list["LossTargets"]) -> "LossTargets":
        sizes = torch.cat([part.ptr[1:] - part.ptr[:-1] for part in parts])
        ptr = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
        names = ["energy", "forces", "weight", "energy_weight", "forces_weight"]
        if all(part.stress is not None for part in parts):
            names += ["stress", "stress_weight", "volume"]
        return cls(ptr=ptr, **{name: torch.cat([getattr(part, name) for part in parts]) for name in names})

    @property
    def has_stress(self) -> bool:
        return self.stress is not None and bool((self.stress_weight > 0).any())


CRITERIA = ("mse", "l1", "huber")
MEV_PER_EV = 1000.0
ENERGY_LOSSES = ("per_atom", "total")


def make_loss(*, energy_weight: float, forces_weight: float, dtype: torch.dtype, criterion: str = "mse",
              huber_delta: float = 0.01, energy_loss: str = "per_atom",
              force_alpha: float | None = None) -> torch.nn.Module:
    """mace's WeightedEnergyForcesLoss, w_E * mean(((E-E_ref)/N)^2) + w_F * mean((F-F_ref)^2), for the
    defaults; otherwise EnergyForcesLoss with the criterion, energy form and weighting asked for."""
    if criterion == "mse" and energy_loss == "per_atom" and force_alpha is None:
        return WeightedEnergyForcesLoss(energy_weight=energy_weight, forces_weight=forces_weight).to(dtype)
    if force_alpha is not None:
        energy_weight, forces_weight = 1.0 - force_alpha, force_alpha
    return EnergyForcesLoss(energy_weight=energy_weight, forces_weight=forces_weight, criterion=criterion,
                            huber_delta=huber_delta, per_atom=energy_loss == "per_atom")


class StressLoss(torch.nn.Module):
    """`base` (the energy/forces loss) + stress_weight * mace's weighted mean squared stress (eV/Å³)
    + virials_weight * mean((ΔW / N)²) with the virial W = -V σ (mace's virials loss, eV/atom), over the
    structures with a reference stress (stress_weight 0 switches the others off). Predictions without
    'stress' give the base loss only."""

    def __init__(self, base: torch.nn.Module, *, stress_weight: float, virials_weight: float):
        super().__init__()
        self.base, self.stress_weight, self.virials_weight = base, float(stress_weight), float(virials_weight)

    def forward(self, ref: LossTargets, pred: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.base(ref, pred)
        if ref.stress is None or "stress" not in pred:
            return loss
        stress_term = weighted_mean_squared_stress(ref, pred, ddp=False)
        return loss + self.stress_weight * stress_term + self.virials_weight * virials_term(ref, pred["stress"])


def virials_term(ref: LossTargets, pred_stress: torch.Tensor) -> torch.Tensor:
    """mean over structures and components of weight * stress_weight * ((W_ref - W_pred) / N)², W = -V σ."""
    num_atoms = (ref.ptr[1:] - ref.ptr[:-1]).to(ref.stress.dtype).view(-1, 1, 1)
    weight = (ref.weight * ref.stress_weight).view(-1, 1, 1)
    dvirial = (pred_stress - ref.stress) * ref.volume.view(-1, 1, 1)
    return (weight * (dvirial / num_atoms).square()).mean()


def with_stress(base: torch.nn.Module, *, compute_stress: bool, stress_weight: float,
                virials_weight: float) -> torch.nn.Module:
    """The loss to train with: `base`, plus the stress terms when GENERAL.compute_stress is on."""
    return StressLoss(base, stress_weight=stress_weight, virials_weight=virials_weight) if compute_stress else base


class EnergyForcesLoss(torch.nn.Module):
    """w_E * mean_s(weight_s * c(ΔE_s [/N_s])) + w_F * mean_atoms,xyz(weight_s(i) * c(ΔF_i)); c = the criterion.
    With c = squared error, per-atom energies and mace's weights this is mace's WeightedEnergyForcesLoss."""

    def __init__(self, *, energy_weight: float, forces_weight: float, criterion: str = "mse",
                 huber_delta: float = 0.01, per_atom: bool = True):
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; use one of {CRITERIA}")
        self.energy_weight, self.forces_weight = float(energy_weight), float(forces_weight)
        self.criterion, self.huber_delta, self.per_atom = criterion, float(huber_delta), per_atom

    def _error(self, difference: torch.Tensor) -> torch.Tensor:
        if self.criterion == "mse":
            return difference.square()
        if self.criterion == "l1":
            return difference.abs()
        return torch.nn.functional.huber_loss(difference, torch.zeros_like(difference), reduction="none",
                                              delta=self.huber_delta)

    def forward(self, ref: LossTargets, pred: dict[str, torch.Tensor]) -> torch.Tensor:
        num_atoms = ref.ptr[1:] - ref.ptr[:-1]
        de = ref.energy - pred["energy"]
        if self.per_atom:
            de = de / num_atoms
        energy_term = (ref.weight * ref.energy_weight * self._error(de)).mean()
        atom_weight = torch.repeat_interleave(ref.weight * ref.forces_weight, num_atoms).unsqueeze(-1)
        forces_term = (atom_weight * self._error(ref.forces - pred["forces"])).mean()
        return self.energy_weight * energy_term + self.forces_weight * forces_term


def error_metrics(targets: LossTargets, pred: dict[str, torch.Tensor]) -> dict[str, float]:
    """Energy MAE/RMSE per atom (eV/atom) and force-component MAE/RMSE (eV/Å)."""
    num_atoms = (targets.ptr[1:] - targets.ptr[:-1]).to(targets.energy.dtype)
    de = (pred["energy"].detach() - targets.energy) / num_atoms
    df = pred["forces"].detach() - targets.forces
    metrics = {"energy_mae_per_atom": float(de.abs().mean()), "energy_rmse_per_atom": float(de.square().mean().sqrt()),
               "forces_mae": float(df.abs().mean()), "forces_rmse": float(df.square().mean().sqrt())}
    if targets.has_stress and "stress" in pred:
        metrics.update(stress_metrics(targets, pred["stress"]))
    return metrics


def stress_note(metrics: dict[str, float]) -> str:
    """', stress MAE x meV/Å³' for a log line when `metrics` have the stress error, else ''."""
    value = metrics.get("stress_mae_meV_per_A3")
    return "" if value is None else f", stress MAE {value:.2f} meV/Å³"


def stress_metrics(targets: LossTargets, pred_stress: torch.Tensor) -> dict[str, float]:
    """Stress-component MAE/RMSE in meV/Å³ over the structures with a reference stress."""
    has = targets.stress_weight > 0
    ds = (pred_stress.detach()[has] - targets.stress[has]) * MEV_PER_EV
    return {"stress_mae_meV_per_A3": float(ds.abs().mean()), "stress_rmse_meV_per_A3": float(ds.square().mean().sqrt())}
