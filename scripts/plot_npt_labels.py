"""Cell volume and reference pressure of every stored label of an NPT run, in the order they were labelled
(the run's ledger): shows which volumes and stresses the datasets span.

    python scripts/plot_npt_labels.py example_run_cu_npt readme_figs/example_cu_npt_labels.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase.io import read
from ase.units import GPa

from fhi_al.labeling import LABEL_ID_KEY, REF_STRESS_KEY
from fhi_al.references.ledger import ledger_label_ids, ledger_path


def labelled_frames(run_dir: Path) -> list:
    """Every stored label once (initial and active-learning sets), in ledger order."""
    frames = {}
    for path in sorted((run_dir / "data").glob("[ia]*/*.xyz")):  # data/initial/, data/al/; not data/final/
        for atoms in read(path, index=":", format="extxyz"):
            frames.setdefault(atoms.info[LABEL_ID_KEY], atoms)
    return [frames[label_id] for label_id in ledger_label_ids(ledger_path(run_dir)) if label_id in frames]


def pressure_GPa(atoms) -> float:
    """-trace(stress)/3 of the reference stress (ASE's sign: positive = compressed; the potential part only,
    without the kinetic term NkT/V)."""
    return float(-np.mean(np.asarray(atoms.info[REF_STRESS_KEY])[:3]) / GPa)


def plot(frames: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_volume, by_pressure) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for procedure, marker, name in (("initial", "o", "initial dataset (EMT NPT MD)"),
                                    ("al", "s", "active learning (MLFF NPT MD)")):
        index = [i for i, atoms in enumerate(frames) if atoms.info.get("procedure") == procedure]
        by_volume.plot(index, [frames[i].get_volume() / len(frames[i]) for i in index], marker, ms=4, label=name)
        by_pressure.plot(index, [pressure_GPa(frames[i]) for i in index], marker, ms=4)
    by_volume.set_ylabel("volume per atom (Å³)")
    by_volume.legend(fontsize=8)
    by_pressure.axhline(0.0, color="grey", lw=0.8, ls=":")
    by_pressure.set_ylabel("−trace(REF_stress)/3 (GPa)")
    by_pressure.set_xlabel("label (in the order labelled)")
    fig.suptitle("Labelled frames of the NPT run")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    frames = labelled_frames(args.run_dir)
    plot(frames, args.output)
    volumes = [atoms.get_volume() / len(atoms) for atoms in frames]
    print(f"{len(frames)} labels: volume per atom {min(volumes):.2f}-{max(volumes):.2f} Å³, pressure "
          f"{min(map(pressure_GPa, frames)):.2f} to {max(map(pressure_GPa, frames)):.2f} GPa")


if __name__ == "__main__":
    main()
