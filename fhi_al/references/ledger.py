"""An append-only ledger with one fsynced JSON line per completed reference label, for crash-consistency checks.

Independent of the datasets: after a crash, every label_id in the ledger must be in the datasets exactly once or
provably not yet acknowledged. A torn last line (kill during an append) is skipped when reading.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..durable import append_durable, read_json_lines

log = logging.getLogger(__name__)

DEFAULT_LEDGER = "reference_ledger.jsonl"


class Ledger:
    """Appends label records to `path`. The caller says whether this rank writes (`writes=False` on the ranks
    of a reference communicator other than its root, so that a collective calculation is recorded once)."""

    def __init__(self, path: str | os.PathLike, *, writes: bool = True):
        self.path = Path(path)
        self.writes = writes

    def record(self, *, label_id: str, energy_eV: float, **extra: Any) -> None:
        if not self.writes:
            return
        entry = {"label_id": label_id, "energy_eV": float(energy_eV), "time": time.time(), "pid": os.getpid(),
                 **extra}
        append_durable(self.path, json.dumps(entry, sort_keys=True) + "\n")

    def entries(self) -> list[dict[str, Any]]:
        return read_ledger(self.path)


def as_ledger(ledger: "Ledger | str | os.PathLike") -> Ledger:
    return ledger if isinstance(ledger, Ledger) else Ledger(ledger)


def read_ledger(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records in order; an unparsable line (torn by a kill) is skipped with a warning."""
    return read_json_lines(path)


def ledger_label_ids(path: str | os.PathLike) -> list[str]:
    return [entry["label_id"] for entry in read_ledger(path)]
