"""NPT dynamics on bulk Cu with EMT: the volume answers the pressure as the material's bulk modulus says, the
temperature is sampled, a saved and restored trajectory continues bit for bit, a collapsing or exploding cell is
caught and reset; the per-trajectory MD mapping; NPT with a tiny MACE ensemble."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.units import GPa

from fhi_al import restart
from fhi_al.errors import SettingsError
from fhi_al.md import (MAX_VOLUME_RATIO, MIN_VOLUME_RATIO, BlowUpDetector, GuardedDynamics, MDParameters, MDState,
                       cell_problem, initialize_velocities, kinetic_temperature_K, make_dynamics)
from fhi_al.md.npt import IntegratorState, integrator_state
from fhi_al.settings.loader import check_md_trajectories, load_al_settings

BAROSTATS = ("berendsen", "mtk", "isomtk")
TEMPERATURE_K = 300.0
PRESSURE_PA = 5e9  # 5 GPa: a volume change of ~3.5% in Cu, far above the fluctuations of a 32-atom cell
# Fast couplings so that 300 steps of 2 fs (0.6 ps) relax the volume; physics, not production settings.
FAST = dict(timestep_fs=2.0, friction_per_fs=0.01, stat_ensemble="NPT", tdamp_fs=50.0, pdamp_fs=200.0,
            taut_fs=50.0, taup_fs=100.0)


def copper(repeat: int = 2):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)  # 32 atoms
    atoms.calc = EMT()
    return atoms


def md_parameters(barostat: str, pressure_Pa: float = 0.0, **changes) -> MDParameters:
    return MDParameters(temperature_K=TEMPERATURE_K, barostat=barostat, pressure_Pa=pressure_Pa, **{**FAST, **changes})


def guarded(barostat: str, pressure_Pa: float = 0.0, *, seed: int = 1, atoms=None, **changes) -> GuardedDynamics:
    atoms = copper() if atoms is None else atoms
    rng = np.random.default_rng(seed)
    md = md_parameters(barostat, pressure_Pa, **changes)
    initialize_velocities(atoms, md.temperature_K, rng)
    return GuardedDynamics(make_dynamics(atoms, md=md, rng=rng), rng=rng, temperature_K=md.temperature_K)


def emt_bulk_modulus_Pa() -> float:
    """Static bulk modulus of EMT Cu from an equation of state (no MD)."""
    volumes, energies = [], []
    for scale in np.linspace(0.98, 1.02, 7):
        atoms = bulk("Cu", "fcc", a=3.61 * scale, cubic=True)
        atoms.calc = EMT()
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    _, _, modulus = EquationOfState(volumes, energies).fit()
    return modulus / GPa * 1e9


def sampled(dynamics: GuardedDynamics, *, segments: int = 30, steps: int = 10) -> tuple[float, float]:
    """Mean volume (Å³) and kinetic temperature over the second half of `segments` segments."""
    volumes, temperatures = [], []
    for _ in range(segments):
        assert dynamics.run(steps) is None
        volumes.append(dynamics.atoms.get_volume())
        temperatures.append(kinetic_temperature_K(dynamics.atoms))
    half = segments // 2
    return float(np.mean(volumes[half:])), float(np.mean(temperatures[half:]))


@pytest.mark.parametrize("barostat", BAROSTATS)
def test_volume_answers_the_pressure_and_the_temperature_is_sampled(barostat):
    volume_0, temperature_0 = sampled(guarded(barostat, 0.0))
    volume_p, temperature_p = sampled(guarded(barostat, PRESSURE_PA))
    # linear elasticity: dV/V = -P/B with B from EMT's own equation of state (thermal expansion cancels)
    expected = -PRESSURE_PA / emt_bulk_modulus_Pa()
    assert volume_p < volume_0
    assert volume_p / volume_0 - 1.0 == pytest.approx(expected, rel=0.3)
    # 32 atoms, 15 samples over 0.3 ps: a loose band around the target
    for temperature in (temperature_0, temperature_p):
        assert 0.8 * TEMPERATURE_K < temperature < 1.25 * TEMPERATURE_K


def frame(dynamics: GuardedDynamics) -> tuple[np.ndarray, ...]:
    atoms = dynamics.atoms
    return atoms.get_positions(), atoms.get_momenta(), atoms.get_cell().array.copy()


@pytest.mark.parametrize("barostat", BAROSTATS)
def test_a_restored_trajectory_continues_exactly(barostat, tmp_path):
    n_steps, m_steps = 30, 30
    uninterrupted = guarded(barostat, 1e9)
    uninterrupted.run(n_steps)
    uninterrupted.run(m_steps)

    first = guarded(barostat, 1e9)
    first.run(n_steps)
    restart.save_record(tmp_path / "md.json", {"md": first.state().to_record()})  # through JSON, as on disk
    saved = MDState.from_record(restart.load_record(tmp_path / "md.json")["md"])
    assert (saved.integrator is None) == (barostat == "berendsen")  # Berendsen's state is all in Atoms

    resumed = guarded(barostat, 1e9, seed=99)  # fresh velocities and a fresh integrator, then the record
    resumed.restore(saved)
    resumed.run(m_steps)
    assert resumed.step == uninterrupted.step == n_steps + m_steps
    for got, expected in zip(frame(resumed), frame(uninterrupted)):
        np.testing.assert_array_equal(got, expected)

    if barostat != "berendsen":  # the chain state matters: without it the continuation differs
        lost = guarded(barostat, 1e9, seed=99)
        saved.integrator = None
        lost.restore(saved)
        lost.run(m_steps)
        assert not np.array_equal(lost.atoms.get_positions(), uninterrupted.atoms.get_positions())


def test_records_without_an_integrator_state_load():
    atoms = copper(1)
    record = {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
              "momenta": np.zeros((len(atoms), 3)).tolist(), "cell": atoms.cell.array.tolist(),
              "pbc": [True] * 3, "step": 12}  # the layout written before NPT
    state = MDState.from_record(record)
    assert state.integrator is None and state.step == 12
    assert "integrator" not in state.to_record()  # NVT records keep their layout


def test_integrator_state_round_trip(tmp_path):
    dynamics = guarded("isomtk", 1e9)
    dynamics.run(5)
    state = integrator_state(dynamics.dyn)
    restart.save_record(tmp_path / "state.json", {"integrator": state.to_record()})
    back = IntegratorState.from_record(restart.load_record(tmp_path / "state.json")["integrator"])
    np.testing.assert_array_equal(back.thermostat.momenta, state.thermostat.momenta)
    np.testing.assert_array_equal(back.reference_cell, state.reference_cell)
    assert back.log_strain == state.log_strain != 0.0


@pytest.mark.parametrize("pressure_Pa, reason", [(1e12, "cell collapsed"), (-1e12, "cell exploded")])
def test_collapse_and_explosion_are_caught_and_the_cell_restored(pressure_Pa, reason):
    # Berendsen with a coupling of 5 time steps: 1000 GPa scales the volume by far more than 2x in one step
    dynamics = guarded("berendsen", 0.0)
    assert dynamics.run(5) is None
    good_cell, good_step = dynamics.atoms.get_cell().array.copy(), dynamics.step
    dynamics.dyn.pressure = pressure_Pa * 1e-9 * GPa  # (ASE 3.29's set_pressure fails on its own arguments)
    dynamics.dyn.set_taup(5 * dynamics.dyn.dt)
    got = dynamics.run(5)
    assert got is not None and reason in got
    np.testing.assert_array_equal(dynamics.atoms.get_cell().array, good_cell)
    assert dynamics.last_good.state.step == good_step and dynamics.resets == 1


def test_reset_of_an_mtk_trajectory_is_a_fresh_start_from_the_last_good_frame():
    dynamics = guarded("mtk", 1e9)
    dynamics.run(20)
    good_cell = dynamics.atoms.get_cell().array.copy()  # the last good frame: a segment's end
    assert integrator_state(dynamics.dyn).thermostat.momenta.any()
    for _ in range(3):  # moves on without observers (as inside a segment that then fails)
        dynamics.dyn.step()
    assert not np.array_equal(dynamics.atoms.get_cell().array, good_cell)
    dynamics.reset("test")
    np.testing.assert_array_equal(dynamics.atoms.get_cell().array, good_cell)
    np.testing.assert_array_equal(dynamics.dyn._h, good_cell)  # the integrator's own copy of the cell too
    state = integrator_state(dynamics.dyn)
    assert not state.thermostat.momenta.any() and not state.cell_momenta.any()
    # the integrator continues from what the atoms hold now: the same as an MTK built on that frame
    fresh_atoms = dynamics.atoms.copy()
    fresh_atoms.calc = EMT()
    fresh = make_dynamics(fresh_atoms, md=md_parameters("mtk", 1e9), rng=np.random.default_rng(0))
    dynamics.run(10)
    fresh.run(10)
    np.testing.assert_allclose(dynamics.atoms.get_positions(), fresh_atoms.get_positions(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dynamics.atoms.get_cell().array, fresh_atoms.get_cell().array, rtol=0, atol=1e-12)


def test_cell_problems():
    atoms = copper(1)
    volume = atoms.get_volume()
    assert cell_problem(atoms, volume) is None
    for factor, reason in ((MIN_VOLUME_RATIO * 0.9, "collapsed"), (MAX_VOLUME_RATIO * 1.1, "exploded")):
        scaled = atoms.copy()
        scaled.set_cell(atoms.cell * factor ** (1 / 3), scale_atoms=True)
        assert reason in cell_problem(scaled, volume)
    flat = atoms.copy()
    flat.set_cell([[3.6, 0, 0], [0, 3.6, 0], [3.6, 0.05, 0.05]], scale_atoms=True)
    assert "degenerate" in cell_problem(flat, None)
    broken = atoms.copy()
    broken.cell[0, 0] = np.nan
    assert cell_problem(broken, volume) == "non-finite cell"
    molecule = atoms.copy()
    molecule.pbc = False
    assert cell_problem(molecule, volume) is None
    collapsed = atoms.copy()
    collapsed.set_cell(atoms.cell * 0.3 ** (1 / 3), scale_atoms=True)
    assert "collapsed" in BlowUpDetector(target_temperature_K=300).check(collapsed, reference_volume_A3=volume)


def test_npt_needs_a_periodic_structure(water, rng):
    with pytest.raises(ValueError, match="periodic"):
        make_dynamics(water, md=md_parameters("mtk"), rng=rng)


# ---------------------------------------------------------------------------------------- per-trajectory MD
def al_settings(tmp_path, text: str):
    path = tmp_path / "active_learning_settings.yaml"
    path.write_text(text)
    return load_al_settings(path)


def test_the_md_mapping_resolves_per_trajectory(tmp_path):
    al = al_settings(tmp_path, "ACTIVE_LEARNING:\n  num_trajectories: 2\nMD:\n  0:\n    temperature: 350\n"
                               "  '1':\n    stat_ensemble: npt\n    barostat: ISOMTK\n    pressure: 2.0e9\n")
    check_md_trajectories(al)
    first, second = al.md_settings_for(0), al.md_settings_for(1)
    assert al.md == first and first.temperature == 350 and first.stat_ensemble == "NVT"
    assert second.stat_ensemble == "NPT" and second.barostat == "isomtk" and second.pressure == 2e9
    assert second.temperature == 300.0  # a key missing in an entry takes the default, not entry 0's value
    parameters = MDParameters.from_settings(second)
    assert parameters.npt and parameters.pressure_Pa == 2e9 and parameters.tdamp_fs == 50.0
    with pytest.raises(KeyError, match="trajectory 2"):
        al.md_settings_for(2)
    assert [key for key, _ in al.md_entries()] == ["MD.0", "MD.1"]


def test_a_plain_md_block_serves_every_trajectory(tmp_path):
    al = al_settings(tmp_path, "MD:\n  temperature: 400\n  stat_ensemble: NPT\n  barostat: berendsen\n")
    assert al.md_by_trajectory == {} and al.md_settings_for(5) is al.md
    assert MDParameters.from_settings(al.md).barostat == "berendsen"
    assert [key for key, _ in al.md_entries()] == ["MD"]


@pytest.mark.parametrize("text, where", [
    ("ACTIVE_LEARNING:\n  num_trajectories: 1\nMD:\n  0: {}\n  1: {}\n", "MD.1"),
    ("ACTIVE_LEARNING:\n  num_trajectories: 3\nMD:\n  0: {}\n  2: {}\n", "MD"),
    ("MD:\n  1: {}\n", "MD"),
    ("MD:\n  -1: {}\n  0: {}\n", "MD.-1"),
])
def test_the_md_mapping_must_cover_the_trajectories(tmp_path, text, where):
    with pytest.raises(SettingsError) as info:
        check_md_trajectories(al_settings(tmp_path, text))
    assert info.value.where == where


def test_trajectories_take_their_own_md_settings():
    from fhi_al.procedures.trajectories import make_trajectories

    nvt = MDParameters(temperature_K=300.0, timestep_fs=1.0, friction_per_fs=0.01)
    npt = MDParameters(**{**md_parameters("isomtk", 1e9).__dict__, "temperature_K": 600.0})
    trajectories = make_trajectories([copper(1), copper(1)], EMT(), mds=[nvt, npt], seed=3)
    assert type(trajectories[0].dynamics.dyn).__name__ == "Langevin"
    assert type(trajectories[1].dynamics.dyn).__name__ == "IsotropicMTKNPT"
    assert trajectories[1].dynamics.temperature_K == 600.0
    volume = trajectories[1].atoms.get_volume()
    assert trajectories[1].advance(10) is None and trajectories[1].atoms.get_volume() != volume
    assert trajectories[1].state().md.integrator is not None


# ----------------------------------------------------------------------------------------- MLFF under NPT
def test_npt_with_a_tiny_mace_ensemble(tmp_path):
    from conformance import emt_labelled
    from fhi_al.architectures.mace.hypers import MaceHypers
    from fhi_al.ensemble import EnsembleCalculator, ensemble_seeds
    from fhi_al.training.config import TrainingConfig
    from fhi_al.training.engine import Trainer, member_tag

    hypers = MaceHypers(num_channels=8, max_L=0, r_max=4.0, num_interactions=1, correlation=2, radial_MLP=[16])
    trainer = Trainer(TrainingConfig(name_exp="npt", hypers=hypers, batch_size=4, scheduler="none"), tmp_path)
    base = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms
    members = []
    for index, seed in enumerate(ensemble_seeds(5, 2)):
        data = emt_labelled(base, 8, seed=20 + index, displacement_A=0.05)
        member = trainer.create_member(member_tag("npt", seed), seed, data, data[:2])
        trainer.train(member, 3)
        members.append(member)
    atoms = base.repeat((2, 1, 1))
    atoms.calc = EnsembleCalculator(members)
    dynamics = guarded("isomtk", 0.0, atoms=atoms, timestep_fs=1.0)
    volume = atoms.get_volume()
    for _ in range(4):
        dynamics.run(5)
    stress = atoms.calc.results.get("stress")
    assert stress is not None and np.isfinite(stress).all() and atoms.calc.results["stress_comm"].shape == (2, 6)
    assert dynamics.step == 20
    if dynamics.resets == 0:  # the MACE stress drove the cell
        assert atoms.get_volume() != volume
    else:  # an untrained model may blow the cell up: the reset put back a good cell
        assert cell_problem(atoms, volume) is None


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow  # about 80 s: an initial dataset and 2 x 60 MLFF MD steps with training
def test_active_learning_with_an_nvt_and_an_npt_trajectory(tmp_path):
    """FHI_AL on bulk Cu with the EMT reference: trajectory 0 (NVT, also the initial dataset's ab initio MD) keeps
    its cell, trajectory 1 (MTK at 2 GPa on the MACE ensemble) labels frames of other volumes and saves its chains."""
    import json

    import yaml
    from ase.io import read
    from workflow import make_run_folder, run_cli

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    folder = make_run_folder(tmp_path / "run", atoms=atoms, mace={"GENERAL": {"name_exp": "cu", "seed": 3}})
    al = yaml.safe_load((folder / "active_learning_settings.yaml").read_text())
    al["ACTIVE_LEARNING"].update(desired_acc=0.0, max_initial_epochs=6, n_samples=3, valid_ratio=0.3,
                                 initial_sampling="aimd", initial_member_data="shared", skip_step_mlff=3, c_x=0.0,
                                 threshold_warmup_checks=3, uncert_not_crossed_limit=10, max_MD_steps=60,
                                 max_set_size=30)
    al["MD"] = {0: {"temperature": 300, "timestep": 2.0, "friction": 0.01},
                1: {"temperature": 500, "timestep": 2.0, "stat_ensemble": "NPT", "barostat": "mtk",
                    "pressure": 2.0e9, "pdamp": 200.0}}
    al["REFERENCE"] = {"calculator": "emt"}
    (folder / "active_learning_settings.yaml").write_text(yaml.safe_dump(al))
    result = run_cli("FHI_AL", folder)
    assert result.returncode == 0, result.stderr[-3000:]

    volume = atoms.get_volume()
    frames = read(folder / "data/al/train.xyz", index=":") + read(folder / "data/al/valid.xyz", index=":")
    by_trajectory = {index: [f for f in frames if f.info["label_id"].startswith(f"al-t{index}-")] for index in (0, 1)}
    assert by_trajectory[0] and by_trajectory[1]
    assert all(f.get_volume() == pytest.approx(volume, rel=1e-12) for f in by_trajectory[0])
    assert max(abs(f.get_volume() / volume - 1.0) for f in by_trajectory[1]) > 1e-3
    record = json.loads((folder / "restart/al/state.json").read_text())["data"]["trajectories"]
    assert "integrator" not in record[0]["md"] and "integrator" in record[1]["md"]
