"""Plots and summaries the procedures write for the user: learning curves and tables of timings."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..durable import atomic_write_bytes, atomic_write_json
from ..logs import DETAIL
from ..training.plots import read_history  # noqa: F401 - the procedures read histories through here

log = logging.getLogger(__name__)

METRIC = "forces_mae"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    log.info("wrote %s", path, extra=DETAIL)


def learning_curve(histories: Mapping[str, Sequence[dict]], path: Path, *, title: str) -> None:
    """Validation force MAE per member against training labels and epochs (whole history of each member)."""
    plt = _pyplot()
    fig, (by_labels, by_epochs) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for tag, history in histories.items():
        points = [h for h in history if h.get(METRIC) is not None]
        if not points:
            continue
        by_labels.plot([h["n_train"] for h in points], [1e3 * h[METRIC] for h in points], "o-", ms=3,
                       alpha=0.7, label=tag)
        by_epochs.plot([h["epoch"] for h in points], [1e3 * h[METRIC] for h in points], "-", alpha=0.7,
                       label=tag)
    for axis, xlabel in ((by_labels, "training structures per member"), (by_epochs, "epoch")):
        axis.set_xlabel(xlabel)
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    by_labels.set_ylabel("validation force MAE (meV/Å)")
    by_epochs.legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)
    plt.close(fig)


def log_stops(stops: Sequence[Any]) -> None:
    """One summary line per member trained to convergence: why its training stopped (the engine's wording)."""
    for stop in stops:
        log.info("Final training: %s.", stop.describe())


def log_outputs(model_paths: Sequence[Path], results_dir: Path, run_dir: Path) -> None:
    """Where the models, plots and tables are, relative to the run folder."""
    def shown(path: Path) -> str:
        return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)

    log.info("Models: %s; plots and tables in %s/.", ", ".join(shown(p) for p in model_paths), shown(results_dir))


def timing_table(timings_s: Mapping[str, float]) -> str:
    total = sum(timings_s.values()) or 1.0
    return ", ".join(f"{name.removesuffix('_s')} {value:.1f} s ({100 * value / total:.0f}%)"
                     for name, value in timings_s.items())


def reference_usage(labeler: Any, folder: Path, *, name: str) -> None:
    """Parallel mode: log how busy each reference group and the ML rank were, and draw the timeline (one
    row per group) to `folder/{name}_reference_timeline.png` with the numbers in a JSON next to it."""
    if not hasattr(labeler, "busy_fractions"):
        return
    fractions = labeler.busy_fractions()
    log.info("Busy fraction of wall time: %s.", ", ".join(f"{key} {100 * value:.0f}%"
                                                           for key, value in fractions.items()))
    atomic_write_json(folder / f"{name}_reference_usage.json", {"busy_fractions": fractions,
                                                                "timeline": labeler.timeline,
                                                                "started_at": labeler.started_at,
                                                                "ml_rank_waited_s": labeler.waited_s})
    if not labeler.timeline:
        return
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(10, 1 + 0.5 * len(labeler.leaders)))
    for entry in labeler.timeline:
        axis.barh(entry["group"], entry["end"] - entry["start"], left=entry["start"] - labeler.started_at,
                  height=0.6, color="tab:blue", edgecolor="white", linewidth=0.3)
    axis.set_yticks(range(len(labeler.leaders)), [f"group {g}" for g in range(len(labeler.leaders))])
    axis.set_xlabel("wall time (s)")
    axis.set_title("Reference calculations per group (busy: " + ", ".join(
        f"{100 * value:.0f}%" for key, value in fractions.items() if key.startswith("group")) + ")")
    save_figure(fig, folder / f"{name}_reference_timeline.png")
    plt.close(fig)


def md_rejections(dynamics: Sequence[Any]) -> dict[str, int]:
    """Frames the guards of these GuardedDynamics rejected, per kind, summed."""
    counts: dict[str, int] = {}
    for guarded in dynamics:
        for kind, count in guarded.rejections().items():
            counts[kind] = counts.get(kind, 0) + count
    return counts


def log_rejections(md_rejections: Mapping[str, int], labels_rejected: int) -> None:
    """One console line: frames the frame guard kept out of the datasets in this session, per reason."""
    total = sum(md_rejections.values())
    if not total and not labels_rejected:
        return
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(md_rejections.items()))
    log.info("Frame guard: %d MD frames rejected and their trajectories reset (%s); %d labels not stored "
             "(reference force above max_reference_force; their calls are counted as cost).", total,
             kinds or "none", labels_rejected)
