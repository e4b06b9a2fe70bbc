"""Learning curves of ensemble members from their results/{tag}_history.jsonl records, as PNG files.

Validation loss and force RMSE per member against the epoch; written atomically.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Sequence

from ..durable import atomic_write_bytes, read_json_lines

log = logging.getLogger(__name__)

CURVES = (("loss", "validation loss", 1.0), ("forces_rmse", "force RMSE / meV Å$^{-1}$", 1e3),
          ("energy_rmse_per_atom", "energy RMSE / meV atom$^{-1}$", 1e3))


def read_history(path: str | Path) -> list[dict]:
    """A member's validation records (results/{tag}_history.jsonl); a torn last line is skipped."""
    return read_json_lines(path)


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


SESSION_CURVES = (("energy_rmse_per_atom", "energy RMSE / meV atom$^{-1}$"),
                  ("forces_rmse", "force RMSE / meV Å$^{-1}$"))
MEV = 1e3


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_session_curves(records: Sequence[dict], out_png: str | Path) -> Path:
    """Training (running, per epoch) and validation energy and force RMSE of one member, log scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(SESSION_CURVES), figsize=(4.2 * len(SESSION_CURVES), 3.4))
    epochs = [r["epoch"] for r in records]
    for axis, (key, label) in zip(axes, SESSION_CURVES):
        train = [(e, r.get(f"train_{key}")) for e, r in zip(epochs, records) if r.get(f"train_{key}") is not None]
        if train:
            axis.plot([e for e, _ in train], [MEV * v for _, v in train], label="training")
        axis.plot(epochs, [MEV * r[key] for r in records], label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_yscale("log")
    axes[0].legend(fontsize="small")
    atomic_write_bytes(out_png, _figure_bytes(fig))
    return Path(out_png)


def plot_parity(sets: dict[str, tuple], out_png: str | Path) -> Path:
    """Predicted against reference per-atom energies and force components; `sets` maps a name (train,
    valid) to (ref_energy_per_atom, pred_energy_per_atom, ref_forces, pred_forces) arrays."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8))
    for name, (ref_e, pred_e, ref_f, pred_f) in sets.items():
        axes[0].scatter(ref_e, pred_e, s=6, label=name)
        axes[1].scatter(ref_f.ravel(), pred_f.ravel(), s=3, label=name)
    for axis, label in zip(axes, ("energy / eV atom$^{-1}$", "force component / eV Å$^{-1}$")):
        low, high = axis.get_xlim()
        axis.plot([low, high], [low, high], color="gray", linewidth=0.8)
        axis.set_xlabel(f"reference {label}")
        axis.set_ylabel(f"predicted {label}")
    axes[0].legend(fontsize="small")
    atomic_write_bytes(out_png, _figure_bytes(fig))
    return Path(out_png)
