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


def make_loss(*, energy_weight: float, forces_weight: float, dtype: torch.dtype) -> torch.nn.Module:
    """mace's WeightedEnergyForcesLoss: w_E * mean(((E-E_ref)/N)^2) + w_F * mean((F-F_ref)^2)."""
    return WeightedEnergyForcesLoss(energy_weight=energy_weight, forces_weight=forces_weight).to(dtype)


def error_metrics(targets: LossTargets, pred: dict[str, torch.Tensor]) -> dict[str, float]:
    """Energy MAE/RMSE per atom (eV/atom) and force-component MAE/RMSE (eV/Å)."""
    num_atoms = (targets.ptr[1:] - targets.ptr[:-1]).to(targets.energy.dtype)
    de = (pred["energy"].detach() - targets.energy) / num_atoms
    df = pred["forces"].detach() - targets.forces
    return {"energy_mae_per_atom": float(de.abs().mean()), "energy_rmse_per_atom": float(de.square().mean().sqrt()),
            "forces_mae": float(df.abs().mean()), "forces_rmse": float(df.square().mean().sqrt())}
