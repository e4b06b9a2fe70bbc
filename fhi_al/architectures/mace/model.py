"""MACE through mace-torch's own modules: ScaleShiftMACE, AtomicData/Configuration/KeySpecification, its batching.

Hyperparameters carry mace_settings.yaml's names; exported files load in mace.calculators.MACECalculator.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, ClassVar, Sequence

import mace  # noqa: F401  - mace before e3nn
import numpy as np
import torch
from ase import Atoms
from e3nn import o3
from mace import data as mace_data
from mace import modules
from mace.tools import AtomicNumberTable, torch_geometric
from mace.tools.torch_tools import default_dtype

from ...durable import atomic_torch_save
from ...errors import InputError
from ..base import REF_ENERGY_KEY, REF_FORCES_KEY, REF_STRESS_KEY, Architecture, Batch, DatasetStatistics
from .hypers import MaceHypers

log = logging.getLogger(__name__)

# a structure without REF_stress gets mace's stress_weight 0
KEYSPEC = mace_data.KeySpecification(info_keys={"energy": REF_ENERGY_KEY, "stress": REF_STRESS_KEY},
                                     arrays_keys={"forces": REF_FORCES_KEY})
# mace_run_train builds "MACE" as a ScaleShiftMACE with zero shift and a non-residual first interaction.
HEAD_KEY, DEFAULT_HEAD = "head", "Default"  # mace's head key in atoms.info and its default head
PLAIN_MACE_FIRST_INTERACTIONS = ("RealAgnosticInteractionBlock", "RealAgnosticDensityInteractionBlock")
DECAYED_INTERACTION_WEIGHTS = ("linear.weight", "skip_tp_full.weight")  # mace's weight-decay param group


class MaceArchitecture(Architecture):
    """MACE (`ARCHITECTURE.model: MACE`) or ScaleShiftMACE; both are mace's ScaleShiftMACE module."""

    name: ClassVar[str] = "MACE"
    Hypers: ClassVar[type] = MaceHypers
    checkpoint_version: ClassVar[int] = 1
    variants: ClassVar[tuple[str, ...]] = ("MACE", "ScaleShiftMACE")
    trains_stress: ClassVar[bool] = True

    def __init__(self, hypers: MaceHypers, *, dtype: torch.dtype = torch.float64, variant: str = "MACE"):
        super().__init__(hypers, dtype=dtype)
        if variant not in self.variants:
            raise InputError(f"unknown MACE variant {variant!r}; use one of {self.variants}",
                             where="ARCHITECTURE.model")
        self.variant = variant
        self.z_table: AtomicNumberTable | None = None
        self.foundation: torch.nn.Module | None = None  # ARCHITECTURE.foundation_model, when fine-tuning
        self.freeze: int | None = None
        self.heads: list[str] | None = None  # mace's heads; None = one ("Default")
        self.replay: list[Atoms] = []  # multihead fine-tuning: frames of the foundation's head
        self._replay_selected: tuple[tuple[int, ...], list[Atoms]] = ((), [])

    def use_foundation(self, spec: str, *, freeze: int | None = None,
                       replay_dataset: str | None = None) -> "MaceArchitecture":
        """Members start from the foundation model `spec` (a MACE-MP size or a .model file) instead of random
        weights; its hyperparameters replace the settings' (logged). `freeze`: mace's --freeze. With
        `replay_dataset` (multihead fine-tuning) the model has a second head, pt_head, trained on those frames;
        the run's data and every prediction use the first head, Default."""
        from . import foundation
        from .replay import REPLAY_HEAD, read_replay

        self.foundation = foundation.load_foundation(spec, dtype=self.dtype)
        self.hypers = foundation.foundation_hypers(self.foundation, self.hypers)
        self.freeze = freeze
        if replay_dataset is not None:
            self.replay = read_replay(replay_dataset, self.foundation)
            self.heads = [foundation.DEFAULT_HEAD, REPLAY_HEAD]
            log.info("multihead fine-tuning: %d replay frames on %s", len(self.replay), REPLAY_HEAD)
        log.info("fine-tuning the foundation model %s (elements %s)%s", spec,
                 foundation.foundation_elements(self.foundation), f", freeze {freeze}" if freeze else "")
        return self

    # --- model -------------------------------------------------------------------------------------------
    def build_model(self, stats: DatasetStatistics, *, seed: int) -> torch.nn.Module:
        self.z_table = AtomicNumberTable(list(stats.species))
        if self.foundation is not None:
            from .foundation import build_finetuned

            return build_finetuned(self.foundation, zs=self.z_table.zs, atomic_energies_eV=self._head_e0s(stats),
                                   seed=seed, dtype=self.dtype, heads=self.heads or ["Default"])
        h = self.hypers
        first = h.interaction_first
        if self.variant == "MACE" and first not in PLAIN_MACE_FIRST_INTERACTIONS:
            first = "RealAgnosticInteractionBlock"
        scale, shift = self._scale_shift(stats)
        with torch.random.fork_rng(devices=[]), default_dtype(self.dtype):
            torch.manual_seed(seed)
            model = modules.ScaleShiftMACE(
                r_max=h.r_max, num_bessel=h.num_radial_basis, num_polynomial_cutoff=h.num_cutoff_basis,
                max_ell=h.max_ell, interaction_cls=modules.interaction_classes[h.interaction],
                interaction_cls_first=modules.interaction_classes[first], num_interactions=h.num_interactions,
                num_elements=len(self.z_table), hidden_irreps=self.hidden_irreps(),
                MLP_irreps=o3.Irreps(h.MLP_irreps), atomic_energies=self._e0_array(stats),
                avg_num_neighbors=stats.num_neighbors_mean, atomic_numbers=self.z_table.zs,
                correlation=h.correlation, gate=modules.gate_dict[h.gate], radial_MLP=list(h.radial_MLP),
                radial_type=h.radial_type, atomic_inter_scale=scale, atomic_inter_shift=shift)
        return model.to(self.dtype)

    def hidden_irreps(self) -> o3.Irreps:
        if self.hypers.hidden_irreps:
            return o3.Irreps(self.hypers.hidden_irreps)
        return o3.Irreps((self.hypers.num_channels * o3.Irreps.spherical_harmonics(self.hypers.max_L))
                         .sort()[0].simplify())

    def update_statistics(self, model: torch.nn.Module, stats: DatasetStatistics) -> None:
        """Refresh E0s, avg_num_neighbors and scale/shift from `stats`; trained weights are untouched. A
        fine-tuned model keeps the foundation's scale, shift and avg_num_neighbors (its weights assume them)."""
        zs = [int(z) for z in model.atomic_numbers]
        unknown = sorted(set(stats.species) - set(zs))
        if unknown:
            raise InputError(f"training data contains element(s) {unknown} the model was not built for ({zs})",
                             where="training set")
        self.z_table = AtomicNumberTable(zs)
        e0 = model.atomic_energies_fn.atomic_energies
        with torch.no_grad():
            flat = e0.view(-1)
            for index, z in enumerate(zs):
                if z in stats.atomic_energies_eV:
                    flat[index] = stats.atomic_energies_eV[z]
            if self.foundation is not None:
                return
            scale, shift = self._scale_shift(stats)
            model.scale_shift.scale.fill_(scale)
            model.scale_shift.shift.fill_(shift)
        for interaction in model.interactions:
            interaction.avg_num_neighbors = stats.num_neighbors_mean

    def bind(self, model: torch.nn.Module) -> "MaceArchitecture":
        """Take the species table from an existing model (e.g. one loaded from a .model file)."""
        self.z_table = AtomicNumberTable([int(z) for z in model.atomic_numbers])
        return self

    def prepare_inference(self, model: torch.nn.Module) -> torch.nn.Module:
        """Speed up a frozen prediction copy: product-basis weights contracted into the coupling tensors once."""
        from .frozen import freeze_contractions

        freeze_contractions(model)
        return model

    def ensemble_predictor(self, models: Sequence[torch.nn.Module]):
        """All prediction copies (from prepare_inference) evaluated as one stacked model: a callable
        batch -> (energies [M, graphs], forces [M, atoms, 3]), or None if the members differ in structure."""
        from .stacked import StackedMace, stackable

        if not stackable(models):
            log.debug("ensemble members differ in structure: evaluated one by one")
            return None
        return StackedMace(models).predict_batch

    def param_groups(self, model: torch.nn.Module, *, weight_decay: float) -> list[dict[str, Any]]:
        """mace_run_train's parameter groups: weight decay on interaction linears and products only; with a
        foundation and `freeze`, mace's own groups with its --freeze applied."""
        if self.foundation is not None and self.freeze:
            from .foundation import freeze_param_groups

            return freeze_param_groups(model, freeze=self.freeze, weight_decay=weight_decay)
        decay, no_decay = [], []
        for name, param in model.interactions.named_parameters():
            (decay if any(key in name for key in DECAYED_INTERACTION_WEIGHTS) else no_decay).append(param)
        return [
            {"name": "embedding", "params": list(model.node_embedding.parameters()), "weight_decay": 0.0},
            {"name": "interactions_decay", "params": decay, "weight_decay": weight_decay},
            {"name": "interactions_no_decay", "params": no_decay, "weight_decay": 0.0},
            {"name": "products", "params": list(model.products.parameters()), "weight_decay": weight_decay},
            {"name": "readouts", "params": list(model.readouts.parameters()), "weight_decay": 0.0},
        ]

    # --- data --------------------------------------------------------------------------------------------
    def featurize(self, atoms: Atoms) -> Any:
        if self.z_table is None:
            raise RuntimeError("MaceArchitecture.featurize before build_model/bind: species unknown")
        unknown = sorted(set(int(z) for z in atoms.numbers) - set(self.z_table.zs))
        if unknown:
            raise InputError(f"structure contains element(s) {unknown} the model was not built for "
                             f"({self.z_table.zs})", where="structure")
        with default_dtype(self.dtype):
            config = mace_data.config_from_atoms(atoms, key_specification=KEYSPEC,
                                                 head_name=atoms.info.get(HEAD_KEY, DEFAULT_HEAD))
            return mace_data.AtomicData.from_config(config, z_table=self.z_table, cutoff=self.cutoff_A,
                                                    heads=self.heads)

    def replay_atoms(self) -> list[Atoms]:
        """Multihead fine-tuning: the replay frames (pt_head) trained alongside the data; else none."""
        if not self.replay or self.z_table is None:
            return []
        from .replay import select_replay

        zs = tuple(self.z_table.zs)
        if self._replay_selected[0] != zs:
            self._replay_selected = (zs, select_replay(self.replay, zs))
        return self._replay_selected[1]

    def collate(self, samples: Sequence[Any]) -> Batch:
        batch = torch_geometric.Batch.from_data_list(list(samples))
        num_atoms = batch.ptr[1:] - batch.ptr[:-1]
        volume = torch.linalg.det(batch.cell.view(-1, 3, 3)).abs()
        return Batch(inputs=batch, energy_eV=batch.energy, forces_eV_per_A=batch.forces, num_atoms=num_atoms,
                     structure_index=batch.batch, energy_weight=batch.weight * batch.energy_weight,
                     forces_weight=batch.weight * batch.forces_weight, stress_eV_per_A3=batch.stress,
                     stress_weight=batch.weight * batch.stress_weight * (volume > 0), volume_A3=volume)

    def predict(self, model: torch.nn.Module, batch: Batch, *, training: bool = False) -> dict[str, torch.Tensor]:
        out = model(batch.inputs.to_dict(), training=training, compute_force=True, compute_stress=False)
        return {"energy": out["energy"], "forces": out["forces"]}

    def predict_stress(self, model: torch.nn.Module, batch: Batch, *,
                       training: bool = False) -> dict[str, torch.Tensor]:
        """Energy, forces and stress [num_structures, 3, 3] (eV/Å³, ASE's sign, (1/V) dE/dstrain; zero for a
        structure without a cell) of a batch, by mace's strain displacement."""
        out = model(batch.inputs.to_dict(), training=training, compute_force=True, compute_stress=True)
        return {"energy": out["energy"], "forces": out["forces"], "stress": out["stress"]}

    def positions(self, inputs: Any) -> torch.Tensor:
        return inputs.positions

    def atomic_energies(self, model: torch.nn.Module, inputs: Any, positions_A: torch.Tensor) -> torch.Tensor:
        """MACE's per-atom energies (`node_energy`, E0 included) as a differentiable function of the
        positions: the engine hook for per-element energy scales."""
        data = inputs.to_dict()
        data["positions"] = positions_A
        return model(data, training=True, compute_force=False, compute_stress=False)["node_energy"]

    # --- files -------------------------------------------------------------------------------------------
    def export(self, model: torch.nn.Module, path: Path) -> None:
        """The whole module pickled, as mace_run_train writes `{name}.model`."""
        standalone = copy.deepcopy(model).cpu()
        for param in standalone.parameters():
            param.requires_grad_(True)
        atomic_torch_save(standalone, path)

    # --- helpers -----------------------------------------------------------------------------------------
    def _scale_shift(self, stats: DatasetStatistics) -> tuple[float, float]:
        scaling = self.hypers.scaling
        if scaling == "rms_forces_scaling":
            scale = stats.forces_rms
        elif scaling == "std_scaling":
            scale = stats.per_atom_energy_std
        else:
            scale = 1.0
        if not scale or not np.isfinite(scale):
            log.warning("scale of the interaction energy is zero: no scaling")
            scale = 1.0
        shift = stats.per_atom_energy_mean if self.variant == "ScaleShiftMACE" else 0.0
        return float(scale), float(shift)

    def _head_e0s(self, stats: DatasetStatistics) -> np.ndarray:
        """E0s of the run's data; with a replay head also the foundation's own E0s for that head."""
        own = self._e0_array(stats)
        if not self.heads or len(self.heads) == 1:
            return own
        zs = [int(z) for z in self.foundation.atomic_numbers]
        table = self.foundation.atomic_energies_fn.atomic_energies.reshape(-1, len(zs))[0]
        return np.stack([own, np.array([float(table[zs.index(z)]) for z in self.z_table.zs])])

    def _e0_array(self, stats: DatasetStatistics) -> np.ndarray:
        return np.array([stats.atomic_energies_eV[z] for z in self.z_table.zs], dtype=float)
