"""What the natively written architectures (aenet, alchemical, ALIGNN, NequIP) share: forces by autograd
through the positions, a plain-data model file (format tag, hypers, species, dtype, state dict) with its
loader, and an ASE calculator of one exported model.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from ase.calculators.calculator import Calculator, all_changes

from ..durable import atomic_torch_save
from ..errors import InputError
from .base import Architecture, Batch


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
