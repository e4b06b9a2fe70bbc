"""An append-only ledger with one fsynced JSON line per reference calculation, with its purpose: what the
user pays (ab initio MD steps, labels, Hessians, relaxations, failed calls) and what analysis mode adds.

Independent of the datasets: after a crash, every label in the ledger must be in the datasets exactly once or
provably not yet acknowledged. A torn last line (kill during an append) is skipped when reading.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase.calculators.calculator import Calculator, all_changes

from ..durable import append_durable, read_json_lines

log = logging.getLogger(__name__)

DEFAULT_LEDGER = "reference_ledger.jsonl"

# What a reference calculation was for. Every purpose but ANALYSIS is part of the cost of a run.
LABEL = "label"  # a structure that goes to the datasets
AIMD_STEP = "aimd_step"  # one step of ab initio MD (initial_sampling: aimd)
HESSIAN = "hessian"  # a displaced structure of a finite-difference Hessian (normal-mode sampling)
RELAXATION = "relaxation"  # a step of the relaxation that precedes the Hessian
ATOMIC_ENERGY = "atomic_energy"  # an isolated atom (FHI_AL-atomic-energies)
RELABEL = "relabel"  # a stored frame recomputed with another reference (FHI_AL-relabel)
ANALYSIS = "analysis"  # analysis mode's true errors: reported, never part of the cost
PURPOSES = (LABEL, AIMD_STEP, HESSIAN, RELAXATION, ATOMIC_ENERGY, RELABEL, ANALYSIS)
# Not a calculation (calls=0): a computed label that the frame guard kept out of the datasets (its call was
# recorded as a label and is paid); it is no longer counted among the stored labels.
REJECTED = "rejected"


def ledger_path(run_dir: str | os.PathLike) -> Path:
    """The run's ledger of reference calculations: logs/reference_ledger.jsonl."""
    return Path(run_dir) / "logs" / DEFAULT_LEDGER


class Ledger:
    """Appends calculation records to `path`. The caller says whether this rank writes (`writes=False` on the
    ranks of a reference communicator other than its root, so that a collective calculation is recorded once)."""

    def __init__(self, path: str | os.PathLike, *, writes: bool = True, label_purpose: str = LABEL):
        self.path = Path(path)
        self.writes = writes
        self.label_purpose = label_purpose  # what the labels of this command are for (RELABEL for FHI_AL-relabel)

    def record(self, *, label_id: str, energy_eV: float | None, purpose: str = LABEL, calls: int = 1,
               ok: bool = True, **extra: Any) -> None:
        """One calculation. `calls` is 0 for a label read from results already paid for (an ab initio MD
        step's); a failed calculation has `ok` false and no energy."""
        if not self.writes:
            return
        purpose = self.label_purpose if purpose == LABEL else purpose
        entry = {"label_id": label_id, "energy_eV": None if energy_eV is None else float(energy_eV),
                 "purpose": purpose, "calls": int(calls), "ok": bool(ok), "time": time.time(), "pid": os.getpid(),
                 **extra}
        append_durable(self.path, json.dumps(entry, sort_keys=True) + "\n")

    def entries(self) -> list[dict[str, Any]]:
        return read_ledger(self.path)


def as_ledger(ledger: "Ledger | str | os.PathLike") -> Ledger:
    return ledger if isinstance(ledger, Ledger) else Ledger(ledger)


def read_ledger(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records in order; an unparsable line (torn by a kill) is skipped with a warning."""
    return read_json_lines(path)


def is_stored_label(entry: dict[str, Any]) -> bool:
    """A completed label (records written before purposes existed are labels)."""
    return entry.get("purpose", LABEL) == LABEL and entry.get("ok", True)


def rejected_ids(entries: list[dict[str, Any]]) -> set[str]:
    return {entry["label_id"] for entry in entries if entry.get("purpose") == REJECTED}


def ledger_label_ids(path: str | os.PathLike) -> list[str]:
    """Labels that reached the datasets (computed, not rejected by the frame guard)."""
    entries = read_ledger(path)
    rejected = rejected_ids(entries)
    return [entry["label_id"] for entry in entries if is_stored_label(entry) and entry["label_id"] not in rejected]


@dataclass
class ReferenceCost:
    """Reference calculations of a run by purpose: `paid` is what the user pays (everything but analysis)."""

    calls: Counter = field(default_factory=Counter)  # purpose -> calculations (failed ones included)
    failed: int = 0
    labels: int = 0  # completed labels, including those read from ab initio MD steps (no extra call)
    rejected: int = 0  # computed labels the frame guard kept out of the datasets (their calls are paid)

    @classmethod
    def from_entries(cls, entries: list[dict[str, Any]]) -> "ReferenceCost":
        cost = cls()
        rejected = rejected_ids(entries)
        cost.rejected = len(rejected)
        for entry in entries:
            if entry.get("purpose") == REJECTED:
                continue
            cost.calls[entry.get("purpose", LABEL)] += int(entry.get("calls", 1))
            cost.failed += not entry.get("ok", True)
            cost.labels += is_stored_label(entry) and entry["label_id"] not in rejected
        return cost

    @classmethod
    def from_ledger(cls, path: str | os.PathLike) -> "ReferenceCost":
        return cls.from_entries(read_ledger(path)) if Path(path).is_file() else cls()

    @property
    def paid(self) -> int:
        return sum(n for purpose, n in self.calls.items() if purpose != ANALYSIS)

    def summary(self) -> str:
        parts = [f"{self.calls[p]} {p.replace('_', ' ')}" for p in PURPOSES if p != ANALYSIS and self.calls[p]]
        text = f"{self.paid} reference calls paid ({', '.join(parts) or 'none'}; {self.failed} failed)"
        text += f", {self.labels} labels stored"
        if self.rejected:
            text += f", {self.rejected} labels rejected by the frame guard"
        if self.calls[ANALYSIS]:
            text += f"; {self.calls[ANALYSIS]} analysis-mode calls (not part of the cost)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"paid": self.paid, "by_purpose": dict(self.calls), "failed": self.failed, "labels": self.labels,
                "rejected": self.rejected}


class CountingCalculator(Calculator):
    """Wraps a calculator that drives MD (ab initio MD) and records every calculation it makes in the ledger
    under `purpose`, failed ones included; the wrapped calculator's results pass through unchanged."""

    def __init__(self, calc: Calculator, *, ledger: "Ledger | str | os.PathLike", purpose: str,
                 id_prefix: str = "md"):
        super().__init__()
        self.calc = calc
        self.ledger = as_ledger(ledger)
        self.purpose = purpose
        self.id_prefix = id_prefix
        self.count = 0

    def _get_name(self) -> str:
        return self.calc.name  # the wrapped reference's identity, e.g. in the datasets' provenance

    @property
    def implemented_properties(self) -> list[str]:  # stress when the wrapped reference gives it (NPT)
        return list(self.calc.implemented_properties)

    @property
    def collective(self) -> bool:
        return bool(getattr(self.calc, "collective", False))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.count += 1
        label_id = f"{self.id_prefix}-{self.count}"
        try:
            self.calc.calculate(self.atoms, properties, system_changes)
        except BaseException:
            self.ledger.record(label_id=label_id, energy_eV=None, purpose=self.purpose, ok=False)
            raise
        self.results = dict(self.calc.results)
        self.ledger.record(label_id=label_id, energy_eV=self.results.get("energy"), purpose=self.purpose,
                           n_atoms=len(self.atoms))

    def reset(self):
        super().reset()
        self.calc.reset()
