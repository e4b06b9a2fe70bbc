"""Fault injection for reference calculators, used only by tests and the chaos script.

FHI_AL_FAULTS="error=0.1,nan=0.05,hang=0.02,seed=1,hang_s=600" makes a fraction of calls raise ReferenceError,
hang (sleep past the reference timeout), or return NaN forces. Draws are seeded and rank-independent, so
every rank of a reference communicator takes the same decision.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..errors import ReferenceError, SettingsError
from .base import STRESS, evaluate, gives_stress, is_collective, label_properties

log = logging.getLogger(__name__)

ENV_VAR = "FHI_AL_FAULTS"
DEFAULT_HANG_S = 600.0


@dataclass(frozen=True)
class FaultSpec:
    error: float = 0.0  # fraction of calls raising ReferenceError
    nan: float = 0.0  # fraction of calls returning NaN forces
    hang: float = 0.0  # fraction of calls sleeping hang_s before computing
    seed: int = 0
    hang_s: float = DEFAULT_HANG_S

    @property
    def active(self) -> bool:
        return self.error > 0 or self.nan > 0 or self.hang > 0


def parse_faults(text: str | None) -> FaultSpec | None:
    """FaultSpec from "key=value,..." (keys: error, nan, hang, seed, hang_s); None for an empty string."""
    if not text or not text.strip():
        return None
    fields = {field.name: field.type for field in dataclasses.fields(FaultSpec)}
    values = {}
    for item in text.split(","):
        key, _, raw = item.strip().partition("=")
        if key not in fields or not raw:
            raise SettingsError(f"bad fault spec item {item!r}; expected key=value with key in {sorted(fields)}",
                                where=ENV_VAR)
        try:
            values[key] = int(raw) if key == "seed" else float(raw)
        except ValueError:
            raise SettingsError(f"bad number in fault spec item {item!r}", where=ENV_VAR) from None
    spec = FaultSpec(**values)
    if min(spec.error, spec.nan, spec.hang) < 0 or spec.error + spec.nan + spec.hang > 1:
        raise SettingsError(f"fault fractions must be >= 0 and sum to <= 1, got {text!r}", where=ENV_VAR)
    return spec


def wrap_with_faults(calc: Calculator, faults: FaultSpec | str | None = None) -> Calculator:
    """`calc` wrapped in fault injection when `faults` (or FHI_AL_FAULTS if faults is None) asks for it."""
    spec = faults if isinstance(faults, FaultSpec) else parse_faults(faults if faults is not None
                                                                     else os.environ.get(ENV_VAR))
    if spec is None or not spec.active:
        return calc
    log.warning("fault injection active on reference %s: %s", calc.name, spec)
    return FaultInjectingCalculator(calc, spec)


class FaultInjectingCalculator(Calculator):
    """Delegates to `inner`, but per call draws one of: error, hang, NaN forces, or a normal result."""

    def __init__(self, inner: Calculator, spec: FaultSpec):
        super().__init__()
        self.inner = inner
        self.spec = spec
        self._rng = np.random.default_rng(spec.seed)
        self.counts = {"calls": 0, "error": 0, "hang": 0, "nan": 0}

    def _get_name(self) -> str:
        return self.inner.name  # the wrapped reference's identity, e.g. in the datasets' provenance

    @property
    def collective(self) -> bool:
        return is_collective(self.inner)

    @property
    def implemented_properties(self) -> list[str]:
        return ["energy", "free_energy", "forces"] + ([STRESS] if gives_stress(self.inner) else [])

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        fault = self._draw()
        formula = self.atoms.get_chemical_formula()
        if fault is not None:  # logged here too, so a test can match every fault with its handling
            log.warning("injected fault %s (call %d) on %s", fault, self.counts["calls"], formula)
        if fault == "error":
            raise ReferenceError("injected fault: reference error", calculator=self.name, structure=formula)
        if fault == "hang":
            time.sleep(self.spec.hang_s)
        results = dict(evaluate(self.inner, self.atoms, label_properties(self.inner, self.atoms)))
        if fault == "nan":
            results["forces"] = np.full((len(self.atoms), 3), np.nan)
        self.results = {"energy": results["energy"], "free_energy": results["energy"],
                        "forces": np.array(results["forces"], copy=True)}
        if results.get(STRESS) is not None:
            self.results[STRESS] = np.array(results[STRESS], copy=True)

    def _draw(self) -> str | None:
        self.counts["calls"] += 1
        u = self._rng.random()
        for name, fraction in (("error", self.spec.error), ("hang", self.spec.hang), ("nan", self.spec.nan)):
            if u < fraction:
                self.counts[name] += 1
                return name
            u -= fraction
        return None

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()
