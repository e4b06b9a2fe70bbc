"""Typed restart state of the procedures: exact round trips, records of the old dict layout (version 1)
still load, newer, foreign and damaged records are refused by name; the LabelBook's order of writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import molecule

from fhi_al import restart
from fhi_al.data.store import DatasetStore
from fhi_al.labeling import LabelResult, labelled_atoms
from fhi_al.md import MDParameters, md_state
from fhi_al.procedures.label_book import LabelBook, Timings
from fhi_al.procedures.state import (STATE_VERSION, ActiveLearningState, InitialDatasetState, PendingLabel,
                                     SamplerState, StateFile, TrajectoryState)
from fhi_al.procedures.trajectories import WAITING, make_trajectories

WATER = molecule("H2O")


def v1_md(step: int, shift: float = 0.0) -> dict:
    """An MD state as the dict layout wrote it."""
    atoms = WATER.copy()
    atoms.positions += shift
    atoms.set_momenta(np.full((3, 3), 0.01 + shift))
    return {"numbers": atoms.get_atomic_numbers(), "positions": atoms.get_positions(), "momenta": atoms.get_momenta(),
            "cell": atoms.get_cell().array.copy(), "pbc": atoms.get_pbc().copy(), "step": step}


RNG_STATE = np.random.default_rng(7).bit_generator.state


def v1_initial_record() -> dict:
    return {"round": 2, "epochs": 4, "trained": ["water_1"], "metrics": {"water_1": {"forces_mae": 0.1}},
            "sampler": {"md": v1_md(120), "rng": RNG_STATE, "failures": 1},
            "pending": {"initial-t0-s120": {"md_step": 120, "positions": WATER.get_positions() + 0.1}}}


def v1_trajectory(index: int, *, pending: dict | None) -> dict:
    return {"index": index, "status": WAITING if pending else "running", "md": v1_md(40, 0.01 * index),
            "last_good": v1_md(30, 0.02 * index), "rng": RNG_STATE, "pending": pending, "epochs_left": 0,
            "labels": 3, "resets": 2}  # resets_in_a_row came later: a default


def v1_al_record() -> dict:
    pending = {"label_id": "al-t1-s40", "md_step": 40, "positions": WATER.get_positions() + 0.2, "kind": "threshold"}
    return {"labels": 5, "metrics": {"water_1": {"forces_mae": 0.2, "loss": 1.0}}, "stale": {"water_1": 1},
            "best_loss": {"water_1": 0.9}, "threshold": {"c_x": 0.5}, "trajectories": [
                v1_trajectory(0, pending=None), v1_trajectory(1, pending=pending)]}


def test_version_1_initial_record_loads(tmp_path):
    restart.save_record(tmp_path / "state.json", v1_initial_record())
    state = StateFile(tmp_path / "state.json", InitialDatasetState).load()
    assert (state.round, state.epochs, state.trained) == (2, 4, ["water_1"])
    assert len(state.samplers) == 1 and state.samplers[0].md.step == 120 and state.samplers[0].failures == 1
    label = state.pending["initial-t0-s120"]
    assert label.label_id == "initial-t0-s120" and label.md_step == 120 and label.trajectory == 0
    np.testing.assert_array_equal(label.positions, WATER.get_positions() + 0.1)


def test_version_1_al_record_loads_with_pending_frames_moved_to_the_book(tmp_path):
    restart.save_record(tmp_path / "state.json", v1_al_record())
    state = StateFile(tmp_path / "state.json", ActiveLearningState).load()
    assert state.labels == 5 and state.stale == {"water_1": 1} and state.threshold == {"c_x": 0.5}
    assert list(state.pending) == ["al-t1-s40"]
    label = state.pending["al-t1-s40"]
    assert (label.trajectory, label.md_step, label.kind) == (1, 40, "threshold")
    trajectories = make_trajectories([WATER] * 2, None, mds=[MDParameters(300.0, 0.5, 0.01)] * 2, seed=1)
    for trajectory, saved in zip(trajectories, state.trajectories):
        trajectory.restore(saved)
    assert [t.status for t in trajectories] == ["running", WAITING]
    assert trajectories[1].step == 40 and trajectories[1].last_good.state.step == 30
    assert trajectories[1].resets == 2 and trajectories[1].resets_in_a_row == 0
    np.testing.assert_array_equal(trajectories[1].atoms.get_positions(), WATER.get_positions() + 0.01)
    np.testing.assert_array_equal(label.atoms(trajectories[1].atoms).get_positions(), WATER.get_positions() + 0.2)


def test_round_trip_is_exact_and_versioned(tmp_path):
    atoms = WATER.copy()
    atoms.set_momenta(np.random.default_rng(1).normal(size=(3, 3)))
    trajectory = TrajectoryState(index=0, status="training", md=md_state(atoms, step=20),
                                 last_good=md_state(atoms, step=10), rng=RNG_STATE, epochs_left=3, labels=1,
                                 resets=4, resets_in_a_row=2)
    pending = {"al-t0-s20": PendingLabel("al-t0-s20", 20, atoms.get_positions(), trajectory=0, kind="blow-up",
                                         cell=np.diag([9.0, 10.0, 11.0]))}
    state = ActiveLearningState(labels=1, metrics={"m": {"loss": 0.5}}, threshold={"x": [1, 2]},
                                trajectories=[trajectory], pending=pending)
    file = StateFile(tmp_path / "al.json", ActiveLearningState)
    file.save(state)
    data = json.loads((tmp_path / "al.json").read_text())["data"]
    assert data["kind"] == "active_learning" and data["version"] == STATE_VERSION
    back = file.load()
    np.testing.assert_array_equal(back.trajectories[0].md.momenta, atoms.get_momenta())  # bit-exact
    assert back.trajectories[0].last_good.step == 10 and back.trajectories[0].resets_in_a_row == 2
    assert back.pending["al-t0-s20"].kind == "blow-up" and back.threshold == {"x": [1, 2]}
    frame = back.pending["al-t0-s20"].atoms(WATER)  # the frame's own cell (NPT), not the template's
    np.testing.assert_array_equal(frame.get_cell().array, np.diag([9.0, 10.0, 11.0]))
    np.testing.assert_array_equal(frame.get_positions(), atoms.get_positions())
    samplers = [SamplerState(md_state(atoms, step=5), RNG_STATE, 2), SamplerState(None, RNG_STATE, 0, samples=7)]
    initial = InitialDatasetState(round=1, samplers=samplers, next_sampler=1)
    StateFile(tmp_path / "ids.json", InitialDatasetState).save(initial)
    loaded = StateFile(tmp_path / "ids.json", InitialDatasetState).load()
    assert loaded.round == 1 and loaded.samplers[0].failures == 2 and loaded.samplers[0].md.step == 5
    assert loaded.samplers[1].samples == 7 and loaded.next_sampler == 1


def test_version_2_initial_record_with_one_sampler_loads(tmp_path):
    """A record written before several systems (version 2, one `sampler`) resumes as system 0's sampler."""
    record = {"kind": "initial_dataset", "version": 2, "round": 1, "epochs": 2, "trained": [], "metrics": {},
              "sampler": SamplerState(md_state(WATER, step=15), RNG_STATE, 1).to_record(), "pending": {}}
    restart.save_record(tmp_path / "state.json", record)
    state = StateFile(tmp_path / "state.json", InitialDatasetState).load()
    assert len(state.samplers) == 1 and state.samplers[0].md.step == 15 and state.next_sampler == 0
    record["sampler"] = None  # saved before the first frame
    restart.save_record(tmp_path / "state.json", record)
    assert StateFile(tmp_path / "state.json", InitialDatasetState).load().samplers == []


def test_missing_or_disabled_record_gives_a_fresh_state(tmp_path):
    assert StateFile(tmp_path / "none.json", ActiveLearningState).load() == ActiveLearningState()
    restart.save_record(tmp_path / "state.json", v1_initial_record())
    assert StateFile(tmp_path / "state.json", InitialDatasetState, enabled=False).load() == InitialDatasetState()
    StateFile(tmp_path / "off.json", InitialDatasetState, enabled=False).save(InitialDatasetState(round=3))
    assert not (tmp_path / "off.json").exists()


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(version=STATE_VERSION + 1), f"state version {STATE_VERSION + 1}"),
    (lambda r: r.update(kind="active_learning", version=STATE_VERSION), "belongs to 'active_learning'"),
    (lambda r: r.pop("round"), "incomplete or damaged (KeyError: 'round')"),
    (lambda r: r["sampler"]["md"].pop("momenta"), "incomplete or damaged (KeyError: 'momenta')"),
])
def test_unreadable_records_are_refused_by_name(tmp_path, change, message):
    record = v1_initial_record()
    change(record)
    path = tmp_path / "restart" / "initial_ds" / "state.json"
    restart.save_record(path, record)
    with pytest.raises(restart.RestartRecordError) as raised:
        StateFile(path, InitialDatasetState).load()
    assert str(path) in str(raised.value) and message in str(raised.value)


# ------------------------------------------------------------------------------------------ LabelBook
def label_result(label_id: str, atoms, energy_eV: float, forces, seconds: float) -> LabelResult:
    """The result a labeler returns: the structure it was sent, carrying the label."""
    return LabelResult(label_id, labelled_atoms(atoms, energy_eV=energy_eV, forces_eV_per_A=forces, reference="xtb",
                                                label_id=label_id), seconds=seconds)


class QueueLabeler:
    """A labeler whose requests wait until the test answers or cancels them."""

    def __init__(self):
        self.submitted: list[str] = []
        self.queued: list[str] = []
        self.running: list[str] = []
        self.frames: dict = {}

    def submit(self, label_id, atoms):
        self.submitted.append(label_id)
        self.queued.append(label_id)
        self.frames[label_id] = atoms

    def cancel_queued(self):
        cancelled, self.queued = self.queued, []
        return cancelled

    @property
    def in_flight(self):
        return len(self.queued) + len(self.running)

    def wait(self):
        done, self.running = self.running, []
        return [label_result(i, self.frames[i], -1.0, np.zeros((3, 3)), 0.5) for i in done]


def make_book(tmp_path, labeler, pending, events):
    store = DatasetStore(tmp_path / "data")
    return LabelBook(store, labeler, pending=pending, stage="al", template=lambda label: WATER,
                     save=lambda: events.append(("save", sorted(pending))), timings=Timings())


def test_label_book_saves_before_it_asks_and_stores_once(tmp_path):
    labeler, pending, events = QueueLabeler(), {}, []
    book = make_book(tmp_path, labeler, pending, events)
    label = PendingLabel("al-t2-s10", 10, WATER.get_positions() + 0.3, trajectory=2)
    book.request(label)
    assert events == [("save", ["al-t2-s10"])] and labeler.submitted == ["al-t2-s10"]
    result = label_result("al-t2-s10", labeler.frames["al-t2-s10"], -5.0, np.ones((3, 3)), 1.5)
    taken = book.take(result)
    assert taken is label and not pending and book.timings.reference_s == 1.5
    stored = book.store_label(result, taken, "al/train")
    assert stored.info["trajectory"] == 2 and stored.info["md_step"] == 10 and stored.info["REF_energy"] == -5.0
    assert stored.info["procedure"] == "al" and stored.info["reference"] == "xtb"
    assert stored.info["label_id"] == "al-t2-s10"
    np.testing.assert_array_equal(stored.get_positions(), WATER.get_positions() + 0.3)
    assert book.store_label(result, taken, "al/train") is None  # a second time: nothing appended
    assert book.store.count("al/train") == 1
    left = {"al-t2-s10": label, "al-t0-s5": PendingLabel("al-t0-s5", 5, WATER.get_positions())}
    again = make_book(tmp_path, QueueLabeler(), left, [])
    assert [lab.label_id for lab in again.resubmit()] == ["al-t2-s10"]  # stored before the kill
    assert again.labeler.submitted == ["al-t0-s5"]


def test_label_book_drain_drops_queued_and_keeps_running_labels(tmp_path):
    labeler, pending, events = QueueLabeler(), {}, []
    book = make_book(tmp_path, labeler, pending, events)
    for step in (5, 10):
        book.request(PendingLabel(f"al-t0-s{step}", step, WATER.get_positions()))
    labeler.running, labeler.queued = ["al-t0-s5"], ["al-t0-s10"]
    cancelled, received = [], []
    book.drain(lambda result: received.append(book.take(result).label_id), on_cancel=cancelled.append)
    assert [c.label_id for c in cancelled] == ["al-t0-s10"] and received == ["al-t0-s5"]
    assert events[-1] == ("save", ["al-t0-s5"])  # saved after the cancel, before waiting
    assert not pending and labeler.in_flight == 0
