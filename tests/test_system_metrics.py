"""The learning curve per system: report() appends each system's validation force MAE with the reference calls
paid and labels stored so far (from the run's ledger); read_curve() and learning_curve_plot() draw it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch
from ase.build import molecule

from fhi_al.labeling import REF_FORCES_KEY, SYSTEM_KEY
from fhi_al.procedures import system_metrics
from fhi_al.references.ledger import ANALYSIS, HESSIAN, LABEL, Ledger
from fhi_al.systems import System

OFFSET_EV_PER_A = {"water": 0.1, "methanol": 0.3}  # each member predicts the reference forces + this


def labelled(name: str, rng: np.random.Generator):
    atoms = molecule({"water": "H2O", "methanol": "CH3OH"}[name])
    atoms.arrays[REF_FORCES_KEY] = rng.normal(size=(len(atoms), 3))
    atoms.info[SYSTEM_KEY] = name
    return atoms


class OffsetTrainer:
    """Predicts each frame's reference forces shifted by its system's offset (member 'b': twice the offset)."""

    def predict_labelled(self, member, frames):
        forces = [a.arrays[REF_FORCES_KEY] + member.scale * OFFSET_EV_PER_A[a.info[SYSTEM_KEY]] for a in frames]
        return None, {"forces": torch.tensor(np.concatenate(forces))}


def test_report_records_the_mae_per_system_with_the_reference_calls_paid(tmp_path, rng):
    systems = [System(index=0, name="methanol", atoms=molecule("CH3OH")),
               System(index=1, name="water", atoms=molecule("H2O"))]
    frames = [labelled("water", rng), labelled("methanol", rng), labelled("water", rng)]
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for index in range(5):
        ledger.record(label_id=f"h{index}", energy_eV=-1.0, purpose=HESSIAN)
    for index in range(3):
        ledger.record(label_id=f"l{index}", energy_eV=-1.0, purpose=LABEL)
    ledger.record(label_id="a0", energy_eV=-1.0, purpose=ANALYSIS)  # not paid
    members = [SimpleNamespace(scale=1.0), SimpleNamespace(scale=2.0)]
    maes = system_metrics.report(OffsetTrainer(), members, frames, systems, results_dir=tmp_path, stage="al",
                                 plot=False, ledger=ledger.path, labels=3)
    assert np.allclose([maes["methanol"], maes["water"]], [0.45, 0.15])  # mean over members: 1x and 2x offset
    entry = json.loads((tmp_path / system_metrics.METRICS_FILE).read_text())[-1]
    assert entry["reference_calls"] == 8 and entry["labels_stored"] == 3 and entry["labels"] == 3
    assert entry["frames"] == {"methanol": 1, "water": 2}
    assert not (tmp_path / "al_forces_per_system.png").exists()


def test_a_single_system_is_recorded_too(tmp_path, rng):
    systems = [System(index=0, name="water", atoms=molecule("H2O"))]
    frames = [labelled("water", rng)]
    system_metrics.report(OffsetTrainer(), [SimpleNamespace(scale=1.0)], frames, systems, results_dir=tmp_path,
                          stage="initial", plot=True, ledger=tmp_path / "no_ledger_yet.jsonl", round=1)
    entry = json.loads((tmp_path / system_metrics.METRICS_FILE).read_text())[-1]
    assert np.isclose(entry["forces_mae"]["water"], 0.1) and entry["reference_calls"] == 0
    assert not (tmp_path / "initial_forces_per_system.png").exists()  # parity per system: several systems only


def synthetic_metrics(path):
    entries = [{"stage": "initial", "round": 1, "forces_mae": {"w": 0.3, "m": 0.5}, "reference_calls": 60,
                "labels_stored": 6},
               {"stage": "initial", "round": 2, "forces_mae": {"w": 0.1, "m": None}, "reference_calls": 66,
                "labels_stored": 12},
               {"stage": "initial", "round": 2, "final": True, "forces_mae": {"w": 0.1, "m": None},
                "reference_calls": 66, "labels_stored": 12},  # the end of the initial dataset repeats its last round
               {"stage": "al", "labels": 0, "forces_mae": {"w": 0.09, "m": 0.2}},  # written before calls were
               {"stage": "al", "labels": 1, "forces_mae": {"w": 0.05, "m": 0.1}, "reference_calls": 67,
                "labels_stored": 13}]
    path.write_text(json.dumps(entries))


def test_read_curve_orders_points_per_system_and_skips_missing_values(tmp_path):
    synthetic_metrics(tmp_path / "m.json")
    curves = system_metrics.read_curve(tmp_path / "m.json")
    assert curves == {"w": [("initial", 60, 6, 0.3), ("initial", 66, 12, 0.1), ("al", 67, 13, 0.05)],
                      "m": [("initial", 60, 6, 0.5), ("al", 67, 13, 0.1)]}
    assert system_metrics.read_curve(tmp_path / "absent.json") == {}


def test_learning_curve_plot_draws_one_line_per_system_and_phase(tmp_path, monkeypatch):
    synthetic_metrics(tmp_path / "m.json")
    drawn = {}
    plt = system_metrics._pyplot()
    monkeypatch.setattr(plt, "close", lambda fig: drawn.setdefault("fig", fig))
    assert system_metrics.learning_curve_plot(tmp_path / "m.json", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
    by_calls, by_labels = drawn["fig"].axes
    assert by_calls.get_yscale() == "log" and by_labels.get_yscale() == "log"
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in by_calls.lines
             if not line.get_label().startswith("_")}
    assert lines == {"w (initial dataset)": ([60, 66], [0.3, 0.1]), "w (active learning)": ([67], [0.05]),
                     "m (initial dataset)": ([60], [0.5]), "m (active learning)": ([67], [0.1])}
    assert [list(line.get_xdata()) for line in by_calls.lines if line.get_linestyle() == ":"] == [[67, 67]]
    assert not system_metrics.learning_curve_plot(tmp_path / "absent.json", tmp_path / "none.png")
