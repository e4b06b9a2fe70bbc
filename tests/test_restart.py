"""Restart records (exact round trip, RNG continuation), completion markers and the run lock."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fhi_al import restart
from fhi_al.errors import RunLockedError


def test_record_round_trip_exact(tmp_path):
    rng = np.random.default_rng(3)
    record = {
        "round": 4, "done": False, "name": "initial", "nan": float("nan"),
        "positions": rng.normal(size=(9, 3)), "numbers": np.array([6, 1, 8], dtype=np.int32),
        "mask": np.array([True, False]), "empty": np.zeros((0, 3)), "scalar": np.float32(1.5),
        "trajectories": {0: {"step": 120, "velocities": rng.normal(size=(9, 3))}, 1: {"step": 7}},
        "pair": (1, "a"), "labels": ["initial-t0-s0", "initial-t0-s10"], "nested": [{"x": np.arange(3)}],
    }
    path = tmp_path / "restart" / "initial_ds" / "state.json"
    restart.save_record(path, record)
    back = restart.load_record(path)
    np.testing.assert_array_equal(back["positions"], record["positions"])  # bit-exact floats
    assert back["positions"].dtype == np.float64 and back["numbers"].dtype == np.int32
    assert back["mask"].dtype == bool and back["empty"].shape == (0, 3)
    assert set(back["trajectories"]) == {0, 1} and back["trajectories"][1] == {"step": 7}
    np.testing.assert_array_equal(back["trajectories"][0]["velocities"], record["trajectories"][0]["velocities"])
    assert back["pair"] == (1, "a") and back["labels"] == record["labels"] and back["round"] == 4
    assert np.isnan(back["nan"]) and back["scalar"] == 1.5 and back["done"] is False
    np.testing.assert_array_equal(back["nested"][0]["x"], np.arange(3))
    assert json.loads(path.read_text())["version"] == restart.SCHEMA_VERSION
    assert not list(path.parent.glob("*.tmp"))


def test_missing_and_incompatible_records(tmp_path):
    assert restart.load_record(tmp_path / "none.json", default={}) == {}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema": restart.SCHEMA, "version": 999, "data": {}}))
    with pytest.raises(restart.RestartRecordError, match="version"):
        restart.load_record(path)
    path.write_text('{"schema": "fhi_al.rest')
    with pytest.raises(restart.RestartRecordError, match="damaged"):
        restart.load_record(path)


def test_numpy_rng_continues_identically(tmp_path):
    rng = np.random.default_rng(2024)
    rng.normal(size=17)
    restart.save_record(tmp_path / "rng.json", {"rng": restart.rng_state(rng)})
    expected = rng.normal(size=(5, 3)), rng.integers(0, 1000, size=8)
    resumed = restart.restore_rng(restart.load_record(tmp_path / "rng.json")["rng"])
    np.testing.assert_array_equal(resumed.normal(size=(5, 3)), expected[0])
    np.testing.assert_array_equal(resumed.integers(0, 1000, size=8), expected[1])


def test_torch_rng_continues_identically(tmp_path):
    torch.manual_seed(11)
    torch.rand(4)
    restart.save_record(tmp_path / "t.json", {"torch": restart.torch_rng_state()})
    expected = torch.randn(6)
    torch.manual_seed(0)  # disturb the stream
    restart.restore_torch_rng(restart.load_record(tmp_path / "t.json")["torch"])
    assert torch.equal(torch.randn(6), expected)


def test_completion_markers(tmp_path):
    assert not restart.is_done(tmp_path, "initial_dataset")
    restart.mark_done(tmp_path, "initial_dataset", {"labels": 40})
    assert restart.is_done(tmp_path, "initial_dataset") and not restart.is_done(tmp_path, "active_learning")
    assert restart.done_info(tmp_path, "initial_dataset")["labels"] == 40
    restart.clear_done(tmp_path, "initial_dataset")
    assert not restart.is_done(tmp_path, "initial_dataset")
    with pytest.raises(ValueError):
        restart.mark_done(tmp_path, "../escape")


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    return int(child.stdout)


def _write_lock(run_dir, pid, **extra):
    (run_dir / restart.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": os.uname().nodename,
                                                         "started_at": 0, **extra}))


def test_lock_refuses_live_process(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, sleeper.pid, start_ticks=restart.process_start_ticks(sleeper.pid))
        with pytest.raises(RunLockedError, match=str(sleeper.pid)):
            with restart.RunLock(tmp_path):
                pass
        assert json.loads((tmp_path / restart.LOCK_NAME).read_text())["pid"] == sleeper.pid  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()


def test_lock_takes_over_dead_process(tmp_path, caplog):
    dead = _dead_pid()
    assert not restart.pid_alive(dead)
    _write_lock(tmp_path, dead)
    with caplog.at_level(logging.WARNING, logger="fhi_al.restart"):
        with restart.RunLock(tmp_path):
            holder = json.loads((tmp_path / restart.LOCK_NAME).read_text())
            assert holder["pid"] == os.getpid()
    assert f"stale lock left by process {dead}" in caplog.text
    assert not (tmp_path / restart.LOCK_NAME).exists()  # released


def test_lock_with_reused_pid_is_stale(tmp_path):
    # our own PID, but a different start time: the recorded process is gone and the PID was reused
    _write_lock(tmp_path, os.getpid(), start_ticks=restart.process_start_ticks(os.getpid()) - 1)
    with restart.RunLock(tmp_path):
        assert json.loads((tmp_path / restart.LOCK_NAME).read_text())["start_ticks"] == \
            restart.process_start_ticks(os.getpid())


def test_lock_between_processes_and_reentrant(tmp_path):
    probe = ("import sys; from fhi_al.restart import RunLock; from fhi_al.errors import RunLockedError\n"
             "try:\n    RunLock(sys.argv[1]).acquire()\nexcept RunLockedError as e:\n    print('LOCKED', e)\n"
             "else:\n    print('ACQUIRED')\n")
    with restart.RunLock(tmp_path):
        with restart.RunLock(tmp_path):  # FHI_AL runs the initial procedure then AL in one process
            pass
        assert (tmp_path / restart.LOCK_NAME).exists()
        out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True).stdout
        assert out.startswith("LOCKED") and str(os.getpid()) in out
    # the other process exits holding the lock (as after SIGKILL): we take it over
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True).stdout
    assert out.startswith("ACQUIRED")
    with restart.RunLock(tmp_path):
        pass


def test_lock_from_other_host_refused(tmp_path):
    (tmp_path / restart.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(RunLockedError, match="elsewhere.example"):
        restart.RunLock(tmp_path).acquire()
