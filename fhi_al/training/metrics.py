"""Errors of predictions against reference labels: the loss (mace's weighted energy/forces formula) and
per-atom energy and force MAE/RMSE. Pure functions of tensors, shared by training, validation and tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from mace.modules.loss import WeightedEnergyForcesLoss

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

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)

    @classmethod
    def from_batch(cls, batch) -> "LossTargets":
        ones = torch.ones_like(batch.energy_eV)
        ptr = torch.cat([batch.num_atoms.new_zeros(1), torch.cumsum(batch.num_atoms, 0)])
        return cls(energy=batch.energy_eV, forces=batch.forces_eV_per_A, ptr=ptr, weight=ones,
                   energy_weight=batch.energy_weight if batch.energy_weight is not None else ones,
                   forces_weight=batch.forces_weight if batch.forces_weight is not None else ones)

    def with_force_mask(self, mask: torch.Tensor | None) -> "LossTargets":
        """These targets with the forces term of structures where `mask` [num_structures] is 0 switched off
        and the others up-weighted by (all atoms)/(selected atoms), so the term keeps its scale."""
        if mask is None:
            return self
        num_atoms = (self.ptr[1:] - self.ptr[:-1]).to(self.weight.dtype)
        mask = mask.to(self.weight.dtype)
        selected = float((mask * num_atoms).sum())
        factor = float(num_atoms.sum()) / selected if selected > 0 else 0.0
        return LossTargets(energy=self.energy, forces=self.forces, ptr=self.ptr, weight=self.weight,
                           energy_weight=self.energy_weight, forces_weight=self.forces_weight * mask * factor)

    def scaled(self, factors: torch.Tensor | None) -> "LossTargets":
        """These targets with every structure's loss weight multiplied by `factors` [num_structures]."""
        if factors is None:
            return self
        factors = factors.to(self.weight.dtype)
        return LossTargets(energy=self.energy, forces=self.forces, ptr=self.ptr, weight=self.weight * factors,
                           energy_weight=self.energy_weight, forces_weight=self.forces_weight)

    @classmethod
    def concatenate(cls, parts: list["LossTargets"]) -> "LossTargets":
        sizes = torch.cat([part.ptr[1:] - part.ptr[:-1] for part in parts])
        ptr = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
        return cls(ptr=ptr, **{name: torch.cat([getattr(part, name) for part in parts])
                               for name in ("energy", "forces", "weight", "energy_weight", "forces_weight")})


CRITERIA = ("mse", "l1", "huber")
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
    return {"energy_mae_per_atom": float(de.abs().mean()), "energy_rmse_per_atom": float(de.square().mean().sqrt()),
            "forces_mae": float(df.abs().mean()), "forces_rmse": float(df.square().mean().sqrt())}
