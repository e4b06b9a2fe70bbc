"""A reference whose cost is simulated, for benchmarks of parallel mode: each calculation sleeps a chosen time
(no CPU used, like a rank waiting for DFT on other nodes), then returns a cheap reference's results."""

from __future__ import annotations

import logging
import time

from ase.calculators.calculator import Calculator, all_changes

from .base import evaluate, is_collective

log = logging.getLogger(__name__)


class SimulatedCostCalculator(Calculator):
    """Delegates to `inner` after sleeping `cost_s` seconds per calculation; its identity is the inner one's."""

    def __init__(self, inner: Calculator, cost_s: float):
        super().__init__()
        self.inner = inner
        self.cost_s = float(cost_s)
        self.implemented_properties = list(inner.implemented_properties)

    def _get_name(self) -> str:
        return self.inner.name  # the datasets' provenance and the ledger name the reference that computed

    @property
    def collective(self) -> bool:
        return is_collective(self.inner)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        time.sleep(self.cost_s)  # a sleeping process uses no CPU: the core stays free for the ML side
        self.results = dict(evaluate(self.inner, self.atoms, tuple(dict.fromkeys(["energy", "forces",
                                                                                  *properties]))))

    def reset(self) -> None:
        super().reset()
        self.inner.reset()

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


def wrap_with_simulated_cost(calc: Calculator, cost_s: float | None) -> Calculator:
    """`calc` made to cost `cost_s` seconds per calculation (REFERENCE.simulated_cost_s), or `calc` itself."""
    if not cost_s:
        return calc
    log.warning("simulated reference cost: every %s calculation sleeps %.3g s first (benchmarks only)", calc.name,
                cost_s)
    return SimulatedCostCalculator(calc, cost_s)
