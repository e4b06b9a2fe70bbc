"""What the natively written architectures (aenet, alchemical, ALIGNN, NequIP) share: forces by autograd
through the positions, a plain-data model file (format tag, hypers, species, dtype, state dict) with its
loader, and an ASE calculator of one exported model.
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ..durable import atomic_torch_save
from ..errors import InputError
from .base import REF_ENERGY_KEY, REF_FORCES_KEY, Architecture, Batch, DatasetStatistics

log = logging.getLogger(__name__)

MIN_ENERGY_SCALE_EV = 1e-6  # below this (e.g. zero forces in the data) the energy scale falls back to 1 eV


@dataclass
class GraphSample:
    """One featurised structure: positions, elements, its neighbour graph (of the architecture's own graph
    type) and its labels, zeros with has_* False when the structure is unlabelled."""

    positions_A: torch.Tensor  # [N, 3]
    numbers: torch.Tensor  # [N] atomic numbers
    graph: Any
    energy_eV: float
    forces_eV_per_A: torch.Tensor
    has_energy: bool
    has_forces: bool


@dataclass
class GraphInputs:
    """Model inputs of a batch: atoms of all structures concatenated, graph indices offset accordingly."""

    positions_A: torch.Tensor  # [N, 3]
    numbers: torch.Tensor  # [N] atomic numbers
    graph: Any  # the architecture's graph type, with a `to(device)` method
    structure_index: torch.Tensor  # [N]
    num_structures: int

    def to(self, device: torch.device | str) -> "GraphInputs":
        return GraphInputs(self.positions_A.to(device), self.numbers.to(device), self.graph.to(device),
                           self.structure_index.to(device), self.num_structures)


class AtomwiseModel(torch.nn.Module):
    """A model whose structure energy is the sum of its per-atom energies (`atomic_energies`)."""

    def forward(self, inputs: Any, positions_A: torch.Tensor) -> torch.Tensor:
        """Energy per structure [num_structures] in eV."""
        atomic = self.atomic_energies(inputs, positions_A)
        return atomic.new_zeros(inputs.num_structures).index_add(0, inputs.structure_index, atomic)


class PositionsArchitecture(Architecture):
    """An architecture whose model maps (inputs, positions_A) to structure energies; subclasses provide
    `empty_model(species)` and set `export_format` (and `export_label` for messages)."""

    export_format: ClassVar[str]
    export_label: ClassVar[str]

    def predict(self, model: torch.nn.Module, batch: Batch, *, training: bool = False) -> dict[str, torch.Tensor]:
        inputs = batch.inputs
        with torch.enable_grad():
            positions = inputs.positions_A.detach().requires_grad_(True)
            energy = model(inputs, positions)
            (gradient,) = torch.autograd.grad(energy.sum(), positions, create_graph=training)
        if training:
            return {"energy": energy, "forces": -gradient}
        return {"energy": energy.detach(), "forces": -gradient.detach()}

    def sample_labels(self, atoms: Any) -> dict[str, Any]:
        """A structure's reference labels for its sample; zeros with has_* False when it is unlabelled."""
        has_energy, has_forces = REF_ENERGY_KEY in atoms.info, REF_FORCES_KEY in atoms.arrays
        forces = atoms.arrays[REF_FORCES_KEY] if has_forces else np.zeros((len(atoms), 3))
        return {"energy_eV": float(atoms.info[REF_ENERGY_KEY]) if has_energy else 0.0,
                "forces_eV_per_A": torch.tensor(np.asarray(forces, dtype=float), dtype=self.dtype),
                "has_energy": has_energy, "has_forces": has_forces}

    def graph_sample(self, atoms: Atoms, graph: Any) -> GraphSample:
        """The sample of `atoms` with its neighbour `graph` and its labels."""
        return GraphSample(positions_A=torch.tensor(atoms.positions, dtype=self.dtype),
                           numbers=torch.tensor(atoms.numbers, dtype=torch.long), graph=graph,
                           **self.sample_labels(atoms))

    def graph_batch(self, samples: Sequence[GraphSample], graph: Any) -> Batch:
        """The Batch of `samples` whose graphs, concatenated with offset indices, are `graph`."""
        num_atoms = torch.tensor([len(s.numbers) for s in samples], dtype=torch.long)
        structure_index = torch.repeat_interleave(torch.arange(len(samples)), num_atoms)
        inputs = GraphInputs(positions_A=torch.cat([s.positions_A for s in samples]),
                             numbers=torch.cat([s.numbers for s in samples]), graph=graph,
                             structure_index=structure_index, num_structures=len(samples))
        return self.labelled_batch(samples, inputs, num_atoms, structure_index)

    def labelled_batch(self, samples: Any, inputs: Any, num_atoms: torch.Tensor,
                       structure_index: torch.Tensor) -> Batch:
        """The Batch of collated `inputs` with the samples' labels; unlabelled structures get weight 0."""
        weights = {name: torch.tensor([float(getattr(s, name)) for s in samples], dtype=self.dtype)
                   for name in ("has_energy", "has_forces")}
        return Batch(inputs=inputs, energy_eV=torch.tensor([s.energy_eV for s in samples], dtype=self.dtype),
                     forces_eV_per_A=torch.cat([s.forces_eV_per_A for s in samples]), num_atoms=num_atoms,
                     structure_index=structure_index, energy_weight=weights["has_energy"],
                     forces_weight=weights["has_forces"])

    def seeded_model(self, species: Any, seed: int) -> torch.nn.Module:
        """`empty_model(species)` initialised from `seed` without touching the global random state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.empty_model(species)

    def set_energy_statistics(self, model: torch.nn.Module, stats: DatasetStatistics, *, shift_eV: float,
                              scale_eV: float) -> None:
        """E0s of the statistics plus a per-atom shift and scale into the model's buffers (atomic_energies_eV,
        energy_shift_eV, energy_scale_eV); trained weights stay untouched."""
        energies = [float(stats.atomic_energies_eV.get(z, 0.0)) for z in model.species]
        model.atomic_energies_eV.copy_(torch.tensor(energies, dtype=model.atomic_energies_eV.dtype))
        if not math.isfinite(scale_eV) or scale_eV < MIN_ENERGY_SCALE_EV:
            log.info("%s: training set gives energy scale %r; using 1 eV", self.export_label, scale_eV)
            scale_eV = 1.0
        model.energy_shift_eV.fill_(float(shift_eV))
        model.energy_scale_eV.fill_(float(scale_eV))

    def export(self, model: torch.nn.Module, path: Path) -> None:
        payload = {"format": self.export_format, "checkpoint_version": self.checkpoint_version,
                   "hypers": asdict(self.hypers), "species": model.species, "dtype": str(self.dtype),
                   "state_dict": model.state_dict()}
        atomic_torch_save(payload, path)

    @classmethod
    def load_exported(cls, path: str | Path) -> tuple[Architecture, torch.nn.Module]:
        """(architecture, model) from a file written by `export`; InputError for any other file."""
        wrong = f"not a model file of fhi_al's {cls.export_label} architecture"
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:  # pickled objects (e.g. a MACE model): another format
            raise InputError(wrong, where=str(path)) from error
        if not isinstance(payload, dict) or payload.get("format") != cls.export_format:
            raise InputError(wrong, where=str(path))
        dtype = getattr(torch, payload["dtype"].removeprefix("torch."))
        architecture = cls(cls.Hypers(**payload["hypers"]), dtype=dtype)
        model = architecture.empty_model(payload["species"])
        model.load_state_dict(payload["state_dict"])
        return architecture, model.eval()


class ExportedModelCalculator(Calculator):
    """ASE calculator of one exported model (energy in eV, forces in eV/Å)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model_path: str | Path, *, loader: Callable[[Any], tuple], **kwargs: Any):
        super().__init__(**kwargs)
        self.architecture, self.model = loader(model_path)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        batch = self.architecture.collate([self.architecture.featurize(self.atoms)])
        result = self.architecture.predict(self.model, batch)
        energy = float(result["energy"][0])
        self.results = {"energy": energy, "free_energy": energy, "forces": result["forces"].numpy().copy()}
