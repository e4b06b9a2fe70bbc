"""MD: Langevin samples the target temperature, exact restart, blow-up detection and reset."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron

from fhi_al import md, restart

TARGET_K = 500.0


def cu13() -> Atoms:
    atoms = Icosahedron("Cu", 2)
    atoms.calc = EMT()
    return atoms


def cu4() -> Atoms:
    atoms = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.165, 0], [1.25, 0.72, 2.04]])
    atoms.calc = EMT()
    return atoms


def mean_temperature(atoms, *, steps, fixcm=False, seed=1, equilibration=300):
    rng = np.random.default_rng(seed)
    md.initialize_velocities(atoms, TARGET_K, rng)
    dyn = md.make_langevin(atoms, temperature_K=TARGET_K, timestep_fs=5.0, friction_per_fs=0.02, rng=rng,
                           fixcm=fixcm)
    temperatures = []
    dyn.attach(lambda: temperatures.append(md.kinetic_temperature_K(atoms)), interval=1)
    dyn.run(steps)
    return float(np.mean(temperatures[equilibration:]))


def test_langevin_samples_target_temperature():
    assert mean_temperature(cu13(), steps=1500) == pytest.approx(TARGET_K, rel=0.1)


def test_fixcm_true_heats_small_cluster_but_default_does_not():
    """Why fixcm=False is the default (NOTES.md): on 4 atoms ASE's fixcm=True runs ~N/(N-1) too hot."""
    free = mean_temperature(cu4(), steps=1500, seed=2)
    fixed = mean_temperature(cu4(), steps=1500, seed=2, fixcm=True)
    assert free == pytest.approx(TARGET_K, rel=0.15)
    assert fixed > 1.2 * TARGET_K


def test_make_langevin_units():
    rng = np.random.default_rng(0)
    dyn = md.make_langevin(cu4(), temperature_K=300.0, timestep_fs=0.5, friction_per_fs=0.01, rng=rng)
    assert dyn.dt == pytest.approx(0.5 * units.fs)
    assert dyn.fr == pytest.approx(0.01 / units.fs)
    assert dyn.temp == pytest.approx(300.0 * units.kB)
    assert dyn.fix_com is False and dyn.comm.size == 1


def test_initialize_velocities_zero_com_and_temperature():
    atoms = Icosahedron("Cu", 3)  # 55 atoms
    md.initialize_velocities(atoms, TARGET_K, np.random.default_rng(5))
    np.testing.assert_allclose(atoms.get_momenta().sum(axis=0), 0.0, atol=1e-10)
    assert md.kinetic_temperature_K(atoms) == pytest.approx(TARGET_K, rel=0.3)


def test_kinetic_temperature_removes_com_motion():
    atoms = cu4()
    masses = atoms.get_masses()
    atoms.set_velocities(np.tile([0.01, -0.02, 0.03], (4, 1)))  # pure translation: no internal motion
    assert md.kinetic_temperature_K(atoms) == pytest.approx(0.0, abs=1e-9)
    velocities = np.zeros((4, 3))
    velocities[0, 0], velocities[1, 0] = 0.01, -0.01  # equal masses: COM at rest
    atoms.set_velocities(velocities)
    kinetic_eV = 0.5 * masses[0] * 2 * 0.01**2
    assert md.kinetic_temperature_K(atoms) == pytest.approx(2 * kinetic_eV / (9 * units.kB))


def test_md_state_restart_is_exact(tmp_path):
    atoms = cu13()
    rng = np.random.default_rng(9)
    md.initialize_velocities(atoms, TARGET_K, rng)
    dyn = md.make_langevin(atoms, temperature_K=TARGET_K, timestep_fs=5.0, friction_per_fs=0.02, rng=rng)
    dyn.run(40)
    restart.save_record(tmp_path / "md.json", {"md": md.md_state(atoms, step=dyn.nsteps).to_record(),
                                               "rng": restart.rng_state(rng)})
    dyn.run(30)
    expected_positions, expected_momenta = atoms.get_positions(), atoms.get_momenta()

    record = restart.load_record(tmp_path / "md.json")
    resumed = cu13()
    rng2 = restart.restore_rng(record["rng"])
    dyn2 = md.make_langevin(resumed, temperature_K=TARGET_K, timestep_fs=5.0, friction_per_fs=0.02, rng=rng2)
    assert md.restore_md_state(resumed, md.MDState.from_record(record["md"]), dyn2) == 40 and dyn2.nsteps == 40
    dyn2.run(30)
    assert dyn2.nsteps == 70
    np.testing.assert_array_equal(resumed.get_positions(), expected_positions)
    np.testing.assert_array_equal(resumed.get_momenta(), expected_momenta)
    with pytest.raises(ValueError):
        md.restore_md_state(cu4(), md.MDState.from_record(record["md"]))


@pytest.fixture
def detector():
    return md.BlowUpDetector(target_temperature_K=TARGET_K, max_distance_A=4.0, max_temperature_factor=5.0)


def healthy_cluster():
    atoms = cu13()
    md.initialize_velocities(atoms, TARGET_K, np.random.default_rng(1))
    atoms.get_forces()
    return atoms


def test_detector_passes_healthy_frames(detector):
    assert detector.check(healthy_cluster()) is None
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)  # atoms at the cell faces have periodic images
    crystal.positions[0] += [21.6, 0.0, 0.0]  # three cell lengths (7.2 Å): the same crystal, far from the box
    crystal.calc = EMT()
    assert detector.check(crystal) is None


def test_detector_catches_nan(detector):
    atoms = healthy_cluster()
    forces = atoms.get_forces().copy()
    forces[3, 1] = np.nan
    assert "forces" in detector.check(atoms, forces)
    atoms.calc.results["forces"] = forces  # what an ensemble calculator returning NaN leaves behind
    assert "forces" in detector.check(atoms)
    atoms = healthy_cluster()
    atoms.positions[0, 0] = np.inf
    assert "positions" in detector.check(atoms)


def test_detector_catches_flying_atom(detector):
    atoms = healthy_cluster()
    atoms.positions[7] += [0.0, 0.0, 8.0]
    reason = detector.check(atoms)
    assert reason is not None and "[7]" in reason


def test_detector_catches_overheating(detector):
    atoms = healthy_cluster()
    atoms.set_momenta(atoms.get_momenta() * np.sqrt(6.0))  # 6x the kinetic energy
    assert "temperature" in detector.check(atoms)


def test_guard_resets_to_last_good_frame(caplog):
    """Segments of one step: the frame of every step is checked; a kick at step 40 goes back to step 39."""
    atoms = cu13()
    rng = np.random.default_rng(4)
    md.initialize_velocities(atoms, TARGET_K, rng)
    dyn = md.make_langevin(atoms, temperature_K=TARGET_K, timestep_fs=5.0, friction_per_fs=0.02, rng=rng)
    detector = md.BlowUpDetector(target_temperature_K=TARGET_K, max_distance_A=4.0)
    seen = {}

    def kick():
        if dyn.nsteps == 39:
            seen["good"] = atoms.get_positions()
        if dyn.nsteps == 40:  # an atom shot out of the cluster
            atoms.positions[2] += [15.0, 0.0, 0.0]

    dyn.attach(kick, interval=1)  # before the guard's observer, which then sees the kicked frame
    guard = md.GuardedDynamics(dyn, rng=rng, temperature_K=TARGET_K, name="trajectory 0", detector=detector)
    reasons = []
    with caplog.at_level(logging.WARNING, logger="fhi_al.md"):
        for _ in range(80):
            reasons.append(guard.run(1))
            if dyn.nsteps == 40:
                seen["after_reset"] = atoms.get_positions()
    assert [step for step, _ in guard.events] == [40] and "[2]" in guard.events[0][1]
    assert [i + 1 for i, reason in enumerate(reasons) if reason is not None] == [40]
    assert guard.resets == 1 and guard.last_good.resets == 1 and guard.resets_in_a_row == 0
    assert "trajectory 0 step 40: atom(s) [2]" in caplog.text
    assert "back to the frame of step 39 with fresh velocities" in caplog.text
    assert dyn.nsteps == 80 and detector.check(atoms) is None
    np.testing.assert_array_equal(seen["after_reset"], seen["good"])  # back on the step-39 geometry
    assert np.linalg.norm(atoms.positions - atoms.positions.mean(axis=0), axis=1).max() < 6.0


class FailingEMT(EMT):
    """EMT whose calculation number `fail_at` raises."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def calculate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("library crashed")
        super().calculate(*args, **kwargs)


def guarded_cu13(calc=None, *, seed=4, **kwargs):
    atoms = cu13()
    if calc is not None:
        atoms.calc = calc
    rng = np.random.default_rng(seed)
    md.initialize_velocities(atoms, TARGET_K, rng)
    dyn = md.make_dynamics(atoms, md=md.MDParameters(TARGET_K, 5.0, 0.02), rng=rng)
    return md.GuardedDynamics(dyn, rng=rng, temperature_K=TARGET_K, **kwargs)


def test_guard_checks_only_the_frame_a_segment_ends_on():
    guard = guarded_cu13()
    checked = []
    guard.on_good_frame(lambda: checked.append(guard.step))
    for _ in range(3):
        assert guard.run(10) is None
    assert checked == [10, 20, 30] and guard.last_good.state.step == 30
    np.testing.assert_array_equal(guard.last_good.state.positions, guard.atoms.get_positions())
    assert guard.run(0) is None and checked == [10, 20, 30, 30]  # a run of 0 steps still checks its frame


def test_guard_turns_a_failed_calculation_into_a_reset(caplog):
    guard = guarded_cu13(FailingEMT(fail_at=15), name="ab initio MD", failure="calculation failed")
    assert guard.run(10) is None
    good = guard.atoms.get_positions()
    handed_out = []
    guard.on_good_frame(lambda: handed_out.append(guard.step))
    with caplog.at_level(logging.WARNING, logger="fhi_al.md"):
        reason = guard.run(10)
    assert reason == "calculation failed: RuntimeError: library crashed"
    assert handed_out == [] and guard.resets == 1 and guard.resets_in_a_row == 1
    assert guard.step == 13  # the 14th step failed: the counter stays where the failure stopped the run
    np.testing.assert_array_equal(guard.atoms.get_positions(), good)
    assert "ab initio MD step 13: calculation failed" in caplog.text
    assert guard.run(10) is None and handed_out == [23] and guard.resets_in_a_row == 0


def test_guard_restore_continues_exactly():
    guard = guarded_cu13(seed=7)
    guard.run(20)
    state, rng_saved = guard.state(), restart.rng_state(guard.rng)
    guard.run(20)
    expected = guard.atoms.get_positions()
    resumed = guarded_cu13(seed=99)
    resumed.rng.bit_generator.state = restart.restore_rng(rng_saved).bit_generator.state
    resumed.restore(state)
    assert resumed.step == 20 and resumed.last_good.state.step == 20
    resumed.run(20)
    np.testing.assert_array_equal(resumed.atoms.get_positions(), expected)


def test_guard_drives_an_npt_integrator():
    """Any ASE dynamics: NPT Berendsen on bulk copper, with a blow-up reset to the last good frame."""
    from ase.md.nptberendsen import NPTBerendsen

    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    crystal.calc = EMT()
    rng = np.random.default_rng(3)
    md.initialize_velocities(crystal, TARGET_K, rng)
    dyn = NPTBerendsen(crystal, timestep=2.0 * units.fs, temperature_K=TARGET_K, pressure_au=0.0,
                       taut=100 * units.fs, taup=500 * units.fs, compressibility_au=1e-2 / units.GPa)
    guard = md.GuardedDynamics(dyn, rng=rng, temperature_K=TARGET_K, name="NPT")
    cell_before = crystal.get_cell().array.copy()
    assert guard.run(20) is None
    assert not np.allclose(crystal.get_cell().array, cell_before)  # the barostat moved the cell
    good_cell, good_positions = crystal.get_cell().array.copy(), crystal.get_positions()
    crystal.set_momenta(crystal.get_momenta() * 10.0)  # 100 x the kinetic temperature
    assert "kinetic temperature" in guard.run(5)
    np.testing.assert_array_equal(crystal.get_positions(), good_positions)
    np.testing.assert_array_equal(crystal.get_cell().array, good_cell)
    assert md.kinetic_temperature_K(crystal) < 3 * TARGET_K


def test_last_good_frame_gives_fresh_velocities():
    atoms = healthy_cluster()
    good_positions = atoms.get_positions()
    keeper = md.LastGoodFrame(atoms, step=12)
    atoms.positions[0] += 30.0
    atoms.set_momenta(np.full((len(atoms), 3), np.nan))
    step = keeper.reset(atoms, temperature_K=TARGET_K, rng=np.random.default_rng(8))
    assert step == 12
    np.testing.assert_array_equal(atoms.get_positions(), good_positions)
    assert np.isfinite(atoms.get_momenta()).all()
    np.testing.assert_allclose(atoms.get_momenta().sum(axis=0), 0.0, atol=1e-10)
    assert 0.0 < md.kinetic_temperature_K(atoms) < 3 * TARGET_K
