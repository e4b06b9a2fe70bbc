"""Draw the workflow flowcharts of the README (readme_figs/workflow_initial.png, workflow_al.png).

    .venv/bin/python scripts/draw_flowchart.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "readme_figs"
BOX = {"step": "#dbe9f6", "decision": "#fde9c9", "io": "#e3f1df"}


def box(axis, xy, text, kind="step", width=5.6, height=0.9):
    x, y = xy
    axis.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                  boxstyle="round,pad=0.05,rounding_size=0.15", fc=BOX[kind], ec="#444", lw=1))
    axis.text(x, y, text, ha="center", va="center", fontsize=8.5, wrap=True)


def arrow(axis, start, end, text=""):
    axis.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "#333", "lw": 1.1})
    if text:
        axis.text((start[0] + end[0]) / 2 + 0.1, (start[1] + end[1]) / 2, text, fontsize=7.5, color="#333")


def canvas(width, height, title):
    fig, axis = plt.subplots(figsize=(width, height))
    axis.set_xlim(0, width * 1.4)
    axis.set_ylim(0, height * 1.4)
    axis.axis("off")
    axis.set_title(title, fontsize=11)
    return fig, axis


def initial_dataset() -> None:
    fig, ax = canvas(8, 8, "FHI_AL-initial-ds: initial dataset and ensemble")
    x = 5.6
    box(ax, (x, 10.3), "geometry.in, settings\n(resume from restart/initial_ds if present)", "io")
    box(ax, (x, 8.9), "frames: MD on the reference (aimd), MACE-MP (mace-mp0)\nor xTB (xtb-md), or normal modes (one Hessian)",
        width=6.4)
    box(ax, (x, 7.5), "every skip_step_initial steps: frame\n→ reference label (queued in parallel mode)")
    box(ax, (x, 6.1), "label → every member (shared) or the one with fewest\nframes (split); train/valid by valid_ratio, fsynced",
        width=6.4)
    box(ax, (x, 4.7), "each member trains intermediate_epochs\n(warm start: weights + optimizer kept)")
    box(ax, (x, 3.2), "validation force MAE ≤ lambda × desired_acc\nor epochs ≥ max_initial_epochs?", "decision",
        width=5.6)
    box(ax, (x, 1.6), "converge_initial (optional), export model/*.model,\nlearning curve, done marker", "io",
        width=5.6)
    for top, bottom in ((10.3, 8.9), (8.9, 7.5), (7.5, 6.1), (6.1, 4.7), (4.7, 3.2)):
        arrow(ax, (x, top - 0.45), (x, bottom + 0.45))
    arrow(ax, (x, 2.75), (x, 2.05), "yes")
    ax.annotate("", xy=(x + 3.25, 8.9), xytext=(x + 3.5, 3.2), arrowprops={"arrowstyle": "->", "color": "#333",
                                                                         "connectionstyle": "angle,angleA=90,angleB=0"})
    ax.plot([x + 2.85, x + 3.5], [3.2, 3.2], color="#333", lw=1.1)
    ax.text(x + 3.6, 6.0, "no: next round\n(n_samples more)", fontsize=7.5)
    fig.savefig(OUT / "workflow_initial.png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def active_learning() -> None:
    fig, ax = canvas(8, 8, "FHI_AL-al: one visit of each trajectory per turn")
    x = 5.6
    box(ax, (x, 10.3), "ensemble + datasets of the initial procedure\n(resume from restart/al if present)", "io",
        width=5.6)
    box(ax, (x, 8.9), "running: skip_step_mlff Langevin steps\non the ensemble mean (own RNG stream)", width=5.6)
    box(ax, (x, 7.4), "uncertainty u = max (or mean) over atoms of\nthe member spread of the forces", width=5.6)
    box(ax, (x, 5.9), "u > moving average × (1 + c_x)\n(or no crossing for uncert_not_crossed_limit)?",
        "decision", width=5.6)
    box(ax, (x, 4.4), "waiting: reference label (queued to a group in\nparallel mode); stored fsynced in train/valid",
        width=5.6)
    box(ax, (x, 2.9), "training: intermediate_epochs per visit until\nmax_epochs_worker, then running again",
        width=5.6)
    box(ax, (x, 1.4), "stop: max_MD_steps, max_set_size or desired_acc\n→ converge_al, export, plots, summary",
        "io", width=5.8)
    for top, bottom in ((10.3, 8.9), (8.9, 7.4), (7.4, 5.9), (5.9, 4.4), (4.4, 2.9)):
        arrow(ax, (x, top - 0.45), (x, bottom + 0.45), "yes" if top == 5.9 else "")
    ax.annotate("", xy=(x - 2.9, 8.9), xytext=(x - 2.9, 5.9), arrowprops={"arrowstyle": "->", "color": "#333"})
    ax.text(x - 4.1, 7.4, "no: keep\nrunning", fontsize=7.5)
    ax.annotate("", xy=(x + 2.9, 8.9), xytext=(x + 2.9, 2.9), arrowprops={"arrowstyle": "->", "color": "#333"})
    ax.text(x + 3.0, 5.9, "next\nturn", fontsize=7.5)
    ax.text(x, 2.15, "stop criteria checked after every turn", ha="center", fontsize=7.5, style="italic")
    fig.savefig(OUT / "workflow_al.png", dpi=130, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    initial_dataset()
    active_learning()
