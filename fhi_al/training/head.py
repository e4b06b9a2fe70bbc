"""Engine-owned energy terms around any architecture: per-element shifts and scales E_i = α_t·Ẽ_i + E0_t and
the ZBL repulsion, applied by wrapping the architecture so that every architecture gets them unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from ase import Atoms

from ..architectures.base import Batch, DatasetStatistics, reference_labels
from ..durable import atomic_torch_save
from ..errors import SettingsError
from ..logs import DETAIL
from . import statistics_refs, zbl

log = logging.getLogger(__name__)

HEAD_SUFFIX = ".engine_head.pt"  # next to an exported model file: the engine's terms
COHESIVE = "cohesive"


@dataclass(frozen=True)
class HeadSpec:
    """What the engine adds to the architecture's energy (all None/False: nothing, the architecture alone)."""

    shift: Any = None  # None | float | {Z: eV} | "${training_data_stats:NAME}"
    scale: Any = None  # None | float | {Z: float} | "${training_data_stats:NAME}"
    shift_trainable: bool = False
    scale_trainable: bool = False
    zbl: bool = False
    zbl_cutoff_A: float = 1.0
    zbl_switch_width_A: float = 0.5

    @property
    def transforms_energy(self) -> bool:
        return self.shift is not None or self.scale is not None

    @property
    def active(self) -> bool:
        return self.transforms_energy or self.zbl

    @classmethod
    def from_config(cls, config: Any) -> "HeadSpec":
        shift = config.energy_shift
        if config.energy_target == COHESIVE:
            if config.atomic_energies is None:
                raise SettingsError("energy_target cohesive subtracts the isolated-atom energies: give them in "
                                    "ARCHITECTURE.atomic_energies (FHI_AL-atomic-energies)",
                                    where="TRAINING.energy_target")
            if shift is not None:
                raise SettingsError("energy_target cohesive fixes the shift to ARCHITECTURE.atomic_energies; "
                                    "leave ARCHITECTURE.energy_shift null", where="ARCHITECTURE.energy_shift")
            shift = dict(config.atomic_energies)
        return cls(shift=shift, scale=config.energy_scale, shift_trainable=config.energy_shift_trainable,
                   scale_trainable=config.energy_scale_trainable, zbl=config.zbl, zbl_cutoff_A=config.zbl_cutoff,
                   zbl_switch_width_A=min(config.zbl_switch_width, config.zbl_cutoff))


def per_type_values(value: Any, species: Sequence[int], stats: DatasetStatistics, *, default: Mapping[int, float],
                    where: str) -> list[float]:
    """One float per element of `species` from a number, a {Z: value} mapping or a statistic reference."""
    value = statistics_refs.resolve(value, stats, where=where)
    if value is None:
        value = default
    if isinstance(value, Mapping):
        missing = [z for z in species if int(z) not in {int(k) for k in value}]
        if missing:
            raise SettingsError(f"no value for element(s) {missing}", where=where)
        table = {int(k): float(v) for k, v in value.items()}
        return [table[int(z)] for z in species]
    return [float(value)] * len(species)


class EngineHead(torch.nn.Module):
    """Per-element shift and scale (parameters when trainable, else buffers) and the ZBL settings."""

    def __init__(self, spec: HeadSpec, species: Sequence[int], *, dtype: torch.dtype):
        super().__init__()
        self.spec = spec
        self.register_buffer("species", torch.tensor(list(species), dtype=torch.long))
        lookup = torch.full((max(species) + 1,), -1, dtype=torch.long)
        lookup[self.species] = torch.arange(len(species))
        self.register_buffer("index_of_z", lookup)
        for name, trainable, initial in (("shift_eV", spec.shift_trainable, 0.0),
                                         ("scale", spec.scale_trainable, 1.0)):
            tensor = torch.full((len(species),), initial, dtype=dtype)
            if trainable:
                setattr(self, name, torch.nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)

    def set_values(self, stats: DatasetStatistics, *, initial: bool) -> None:
        """Shift/scale from the spec and `stats`; trainable ones only when `initial` (they are trained)."""
        species = self.species.tolist()
        with torch.no_grad():
            if initial or not self.spec.shift_trainable:
                shifts = per_type_values(self.spec.shift, species, stats, default=stats.atomic_energies_eV,
                                         where="ARCHITECTURE.energy_shift")
                self.shift_eV.copy_(torch.tensor(shifts, dtype=self.shift_eV.dtype))
            if initial or not self.spec.scale_trainable:
                scales = per_type_values(self.spec.scale, species, stats, default=dict.fromkeys(species, 1.0),
                                         where="ARCHITECTURE.energy_scale")
                if min(scales) <= 0.0:
                    raise SettingsError(f"energy scales must be > 0, got {scales}", where="ARCHITECTURE.energy_scale")
                self.scale.copy_(torch.tensor(scales, dtype=self.scale.dtype))

    def uniform_scale(self) -> bool:
        return self.spec.scale_trainable is False and bool(torch.all(self.scale == self.scale[0]))

    def shift_energy(self, pairs: zbl.PairList) -> torch.Tensor:
        """Sum of E0_t over the atoms of each structure [num_structures]."""
        per_atom = self.shift_eV[self.index_of_z[pairs.numbers]]
        return per_atom.new_zeros(pairs.num_structures).index_add(0, pairs.structure_index, per_atom)


class HeadedModel(torch.nn.Module):
    """The architecture's model (`base`) and the engine's terms (`head`)."""

    def __init__(self, base: torch.nn.Module, head: EngineHead):
        super().__init__()
        self.base = base
        self.head = head


@dataclass
class HeadedSample:
    inner: Any
    pairs: zbl.PairList


@dataclass
class HeadedInputs:
    inner: Any
    pairs: zbl.PairList

    def to(self, device) -> "HeadedInputs":
        inner = self.inner.to(device) if hasattr(self.inner, "to") else self.inner
        return HeadedInputs(inner=inner, pairs=self.pairs.to(device))


class HeadedArchitecture:
    """An architecture plus the engine's energy terms; anything else is delegated to the wrapped one."""

    def __init__(self, inner: Any, spec: HeadSpec):
        self.inner = inner
        self.spec = spec

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    # --- statistics -----------------------------------------------------------------------------------
    def inner_statistics(self, model_head: EngineHead | None, stats: DatasetStatistics,
                         train_atoms: Sequence[Atoms]) -> DatasetStatistics:
        """The statistics the wrapped architecture sees: with the engine's shift, E0 = 0 and the per-atom
        energy mean/std of what is left after the shift (so shifts are not counted twice)."""
        if not self.spec.transforms_energy or model_head is None:
            return stats
        shift = dict(zip(model_head.species.tolist(), model_head.shift_eV.detach().tolist()))
        scale = dict(zip(model_head.species.tolist(), model_head.scale.detach().tolist()))
        residual = []
        for atoms in train_atoms:
            energy, _ = reference_labels(atoms)
            numbers = atoms.numbers.tolist()
            residual.append((energy - sum(shift[z] for z in numbers)) / sum(scale[z] for z in numbers))
        residual = np.array(residual)
        return replace(stats, atomic_energies_eV=dict.fromkeys(stats.species, 0.0),
                       per_atom_energy_mean=float(residual.mean()),
                       per_atom_energy_std=float(residual.std(ddof=1)) if len(residual) > 1 else 0.0)

    def build_model(self, stats: DatasetStatistics, *, seed: int,
                    train_atoms: Sequence[Atoms] = ()) -> HeadedModel:
        head = EngineHead(self.spec, stats.species, dtype=self.inner.dtype)
        head.set_values(stats, initial=True)
        base = self.inner.build_model(self.inner_statistics(head, stats, train_atoms), seed=seed)
        return HeadedModel(base, head)

    def refresh(self, model: HeadedModel, stats: DatasetStatistics, train_atoms: Sequence[Atoms]) -> None:
        model.head.set_values(stats, initial=False)
        self.inner.update_statistics(model.base, self.inner_statistics(model.head, stats, train_atoms))

    def update_statistics(self, model: HeadedModel, stats: DatasetStatistics) -> None:
        model.head.set_values(stats, initial=False)

    def initialize_from_samples(self, model: HeadedModel, samples: Sequence[HeadedSample]) -> None:
        self.inner.initialize_from_samples(model.base, [s.inner for s in samples])

    def param_groups(self, model: HeadedModel, *, weight_decay: float) -> list[dict[str, Any]]:
        hook = getattr(self.inner, "param_groups", None)
        groups = (hook(model.base, weight_decay=weight_decay) if hook is not None else
                  [{"name": "all", "params": list(model.base.parameters()), "weight_decay": weight_decay}])
        trainable = [p for p in model.head.parameters() if p.requires_grad]
        return groups + ([{"name": "energy_head", "params": trainable, "weight_decay": 0.0}] if trainable else [])

    def prepare_inference(self, model: HeadedModel) -> HeadedModel:
        prepare = getattr(self.inner, "prepare_inference", None)
        if prepare is not None:
            model.base = prepare(model.base)
        return model

    # --- data -----------------------------------------------------------------------------------------
    def featurize(self, atoms: Atoms) -> HeadedSample:
        cutoff = self.spec.zbl_cutoff_A if self.spec.zbl else 0.0
        return HeadedSample(inner=self.inner.featurize(atoms),
                            pairs=zbl.pair_list(atoms, cutoff_A=cutoff, dtype=self.inner.dtype))

    def collate(self, samples: Sequence[HeadedSample]) -> Batch:
        batch = self.inner.collate([s.inner for s in samples])
        pairs = zbl.collate_pairs([s.pairs for s in samples])
        return replace(batch, inputs=HeadedInputs(inner=batch.inputs, pairs=pairs))

    def predict(self, model: HeadedModel, batch: Batch, *, training: bool = False) -> dict[str, torch.Tensor]:
        inner_batch = replace(batch, inputs=batch.inputs.inner)
        pairs, head = batch.inputs.pairs, model.head
        if self.spec.transforms_energy and not head.uniform_scale():
            energy, forces = self._scaled_per_atom(model, inner_batch, pairs, training=training)
        else:
            out = self.inner.predict(model.base, inner_batch, training=training)
            factor = head.scale[0] if self.spec.transforms_energy else 1.0
            energy, forces = factor * out["energy"], factor * out["forces"]
        if self.spec.transforms_energy:
            energy = energy + head.shift_energy(pairs)
        if self.spec.zbl:
            positions = self.inner.positions(inner_batch.inputs)
            if positions is None:
                raise SettingsError(f"ZBL needs the atom positions of {self.inner.name}'s batches (hook "
                                    f"`positions`)", where="ARCHITECTURE.zbl")
            e_zbl, f_zbl = zbl.zbl_energy_forces(pairs, positions, cutoff_A=self.spec.zbl_cutoff_A,
                                                 width_A=self.spec.zbl_switch_width_A)
            energy, forces = energy + e_zbl, forces + f_zbl
        if not training:
            energy, forces = energy.detach(), forces.detach()
        return {"energy": energy, "forces": forces}

    def _scaled_per_atom(self, model: HeadedModel, batch: Batch, pairs: zbl.PairList, *, training: bool):
        positions = self.inner.positions(batch.inputs)
        with torch.enable_grad():
            positions = positions.detach().requires_grad_(True)
            atomic = self.inner.atomic_energies(model.base, batch.inputs, positions)
            if atomic is None:
                raise SettingsError(f"per-element energy scales need per-atom energies, which {self.inner.name} "
                                    f"does not provide; give one scale for all elements",
                                    where="ARCHITECTURE.energy_scale")
            atomic = atomic * model.head.scale[model.head.index_of_z[pairs.numbers]]
            energy = atomic.new_zeros(pairs.num_structures).index_add(0, pairs.structure_index, atomic)
            (gradient,) = torch.autograd.grad(energy.sum(), positions, create_graph=training)
        return energy, -gradient

    # --- files ----------------------------------------------------------------------------------------
    def export(self, model: HeadedModel, path: Path) -> None:
        """The architecture's own file plus `{path}.engine_head.pt` with the engine's terms."""
        self.inner.export(model.base, path)
        atomic_torch_save({"spec": asdict(self.spec), "state_dict": model.head.state_dict(),
                           "species": model.head.species.tolist()}, head_path(path))
        log.info("engine energy terms of %s written to %s (apply with fhi_al.training.head.load_exported)",
                 path, head_path(path), extra=DETAIL)


def head_path(model_path: str | Path) -> Path:
    return Path(f"{model_path}{HEAD_SUFFIX}")


def load_exported(path: str | Path) -> tuple[Any, torch.nn.Module]:
    """(architecture, model) of an exported model, wrapped with the engine's terms when their file exists."""
    from ..architectures.registry import load_exported as load_base

    architecture, model = load_base(path)
    extra = head_path(path)
    if not extra.exists():
        return architecture, model
    payload = torch.load(extra, map_location="cpu", weights_only=False)
    spec = HeadSpec(**payload["spec"])
    head = EngineHead(spec, payload["species"], dtype=architecture.dtype)
    head.load_state_dict(payload["state_dict"])
    return HeadedArchitecture(architecture, spec), HeadedModel(model, head).eval()


def base_architecture(architecture: Any) -> Any:
    """The architecture itself, without the engine's wrapper."""
    return architecture.inner if isinstance(architecture, HeadedArchitecture) else architecture
