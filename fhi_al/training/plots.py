"""Learning curves of ensemble members from their results/{tag}_history.jsonl records, as PNG files.

Validation loss and force RMSE per member against the epoch; written atomically.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Sequence

from ..durable import atomic_write_bytes

log = logging.getLogger(__name__)

CURVES = (("loss", "validation loss", 1.0), ("forces_rmse", "force RMSE / meV Å$^{-1}$", 1e3),
          ("energy_rmse_per_atom", "energy RMSE / meV atom$^{-1}$", 1e3))


def read_history(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_histories(history_paths: Sequence[str | Path], out_png: str | Path) -> Path:
    """One panel per quantity of CURVES, one line per member (history file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for path in history_paths:
        records = read_history(path)
        if not records:
            continue
        epochs = [r["epoch"] for r in records]
        for axis, (key, label, factor) in zip(axes, CURVES):
            axis.plot(epochs, [factor * r[key] for r in records], label=records[0].get("tag", Path(path).stem))
            axis.set_xlabel("epoch")
            axis.set_ylabel(label)
            axis.set_yscale("log")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_png, buffer.getvalue())
    return Path(out_png)
