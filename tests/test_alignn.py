"""Tests of ALIGNN: atom graph and line graph (bond and triplet counts, lengths and angles against ASE), forces =
-dE/dR for molecules and crystals, smoothness at the cutoff, statistics, export, calculator and the engine."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from conformance import ArchitectureConformance, check_export_round_trip

from fhi_al.architectures.alignn.graph import build_graph
from fhi_al.architectures.alignn.hypers import AlignnHypers
from fhi_al.architectures.alignn.layers import PolynomialEnvelope
from fhi_al.architectures.alignn.model import AlignnArchitecture, AlignnCalculator, bond_geometry, load_exported
from fhi_al.architectures.base import REF_ENERGY_KEY, REF_FORCES_KEY, DatasetStatistics
from fhi_al.architectures.registry import get_architecture_class
from fhi_al.errors import InputError, SettingsError
from fhi_al.settings.typed import build_section

TINY = dict(cutoff=4.0, hidden_features=16, embedding_features=8, edge_input_features=8, triplet_input_features=6,
            alignn_layers=1, gcn_layers=1)
E0_EV = {1: -13.6, 6: -1029.8, 8: -2041.3, 14: -7800.0}
CH_BOND_ONLY_A, WITH_HH_A = 1.5, 2.0  # methane: C-H 1.09 Å, H-H 1.78 Å


def tiny_stats(species, **overrides) -> DatasetStatistics:
    values = dict(species=sorted(species), atomic_energies_eV={z: E0_EV[z] for z in species},
                  atomic_energies_source="settings", num_neighbors_mean=6.0, per_atom_energy_mean=0.2,
                  per_atom_energy_std=0.05, forces_rms=1.3)
    values.update(overrides)
    return DatasetStatistics(**values)


def energy_forces(arch, model, atoms):
    result = arch.predict(model, arch.collate([arch.featurize(atoms)]))
    return float(result["energy"][0]), result["forces"].numpy()


def fd_force(arch, model, atoms, atom, axis, step_A=1e-5) -> float:
    shifted = [atoms.copy(), atoms.copy()]
    shifted[0].positions[atom, axis] += step_A
    shifted[1].positions[atom, axis] -= step_A
    plus, minus = (energy_forces(arch, model, a)[0] for a in shifted)
    return -(plus - minus) / (2 * step_A)


@pytest.fixture
def arch() -> AlignnArchitecture:
    return AlignnArchitecture(AlignnHypers(**TINY))


@pytest.fixture
def model(arch):
    return arch.build_model(tiny_stats([1, 6, 8]), seed=7)


# ---------------------------------------------------------------- graphs

@pytest.mark.parametrize("cutoff_A, bonds, triplets", [(CH_BOND_ONLY_A, 8, 12), (WITH_HH_A, 20, 60)])
def test_line_graph_of_methane(cutoff_A, bonds, triplets):
    """C-H only: 4 bonds each way, 4 x 3 ordered bond pairs at C; with H-H every atom has 4 neighbours."""
    graph = build_graph(molecule("CH4"), cutoff_A=cutoff_A)
    assert (graph.num_bonds, graph.num_triplets) == (bonds, triplets)
    src, dst = graph.triplet_src, graph.triplet_dst
    assert torch.equal(graph.bond_i[src], graph.bond_i[dst]) and bool((src != dst).all())
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert len(pairs) == triplets and all((b, a) in pairs for a, b in pairs)


def test_bond_lengths_and_angle_cosines_match_ase():
    atoms = molecule("CH4")
    graph = build_graph(atoms, cutoff_A=CH_BOND_ONLY_A)
    lengths, cosines = bond_geometry(torch.tensor(atoms.positions), graph)
    np.testing.assert_allclose(lengths.numpy(), atoms.get_distance(0, 1), rtol=1e-12)  # all C-H alike
    np.testing.assert_allclose(cosines.numpy(), -1.0 / 3.0, rtol=1e-10)  # tetrahedral angle
    i, j = graph.bond_i.numpy(), graph.bond_j.numpy()
    src, dst = graph.triplet_src.numpy(), graph.triplet_dst.numpy()
    angles = [atoms.get_angle(j[a], i[a], j[b]) for a, b in zip(src, dst)]
    np.testing.assert_allclose(np.degrees(np.arccos(cosines.numpy())), angles, rtol=1e-10)


def test_k_nearest_keeps_the_nearest_neighbours():
    atoms = molecule("CH4")
    graph = build_graph(atoms, cutoff_A=WITH_HH_A, strategy="k_nearest", max_neighbors=2)
    assert (graph.num_bonds, graph.num_triplets) == (10, 10)  # 5 atoms x 2 bonds, 2 x 1 pairs each
    i, j = graph.bond_i.numpy(), graph.bond_j.numpy()
    assert all(j[i == h][0] == 0 for h in range(1, 5))  # each H keeps its C first
    assert np.all(atoms.get_distances(0, j[i == 0]) < CH_BOND_ONLY_A)


def test_periodic_bonds_carry_cell_shifts():
    crystal = bulk("Si", "diamond", a=5.43)
    graph = build_graph(crystal, cutoff_A=2.5)
    lengths, cosines = bond_geometry(torch.tensor(crystal.positions), graph)
    assert graph.num_bonds == 8 and graph.num_triplets == 24  # 4 neighbours per atom, all images
    np.testing.assert_allclose(lengths.numpy(), 5.43 * np.sqrt(3) / 4, rtol=1e-12)
    np.testing.assert_allclose(cosines.numpy(), -1.0 / 3.0, rtol=1e-10)


# ---------------------------------------------------------------- physics

def test_molecule_without_cell_forces_are_minus_gradient(arch, water):
    assert not water.pbc.any() and water.cell.rank == 0
    model = arch.build_model(tiny_stats([1, 8]), seed=3)
    water.positions += np.random.default_rng(0).normal(scale=0.05, size=(3, 3))
    _, forces = energy_forces(arch, model, water)
    for atom, axis in [(0, 0), (1, 1), (2, 2)]:
        assert forces[atom, axis] == pytest.approx(fd_force(arch, model, water, atom, axis), abs=1e-7)
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-10)  # no external field without a cell
    assert np.abs(forces).max() > 1e-4


def test_isolated_atoms_are_additive_and_force_free(arch):
    model = arch.build_model(tiny_stats([8]), seed=1)
    energy, forces = energy_forces(arch, model, Atoms("O", positions=[[0.1, 0.2, 0.3]]))
    np.testing.assert_array_equal(forces, 0.0)
    assert energy_forces(arch, model, Atoms("O"))[0] == energy
    far_apart = Atoms("O2", positions=[[0, 0, 0], [0, 0, arch.hypers.cutoff + 0.5]])
    assert energy_forces(arch, model, far_apart)[0] == pytest.approx(2 * energy, rel=1e-14)  # no bonds
    close = Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.3]])
    assert abs(energy_forces(arch, model, close)[0] - 2 * energy) > 1e-4


def test_periodic_forces_and_extensivity():
    arch = AlignnArchitecture(AlignnHypers(**{**TINY, "cutoff": 3.0}))
    model = arch.build_model(tiny_stats([14], num_neighbors_mean=4.0), seed=2)
    crystal = bulk("Si", "diamond", a=5.43)
    crystal.rattle(0.1, seed=5)
    energy, forces = energy_forces(arch, model, crystal)
    assert forces[1, 2] == pytest.approx(fd_force(arch, model, crystal, 1, 2), abs=1e-7)
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-10)
    big_energy, big_forces = energy_forces(arch, model, crystal.repeat((2, 2, 2)))
    assert big_energy == pytest.approx(8 * energy, rel=1e-12)
    np.testing.assert_allclose(big_forces, np.tile(forces, (8, 1)), atol=1e-10)


def test_envelope_value_and_slopes_vanish_at_cutoff():
    envelope = PolynomialEnvelope(cutoff_A=2.0, exponent=6)
    r = torch.tensor([0.0, 1.0, 2.0 - 1e-3, 2.0, 2.5], dtype=torch.float64, requires_grad=True)
    value = envelope(r)
    (slope,) = torch.autograd.grad(value.sum(), r, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), r)
    assert value[0] == 1.0 and 0.0 < value[1] < 1.0
    assert abs(value[2]) < 1e-7 and abs(slope[2]) < 1e-4 and abs(curvature[2]) < 0.2
    assert value[3] == value[4] == 0.0 and slope[3] == 0.0


def test_energy_and_forces_continuous_when_an_atom_crosses_the_cutoff(arch, model):
    """A third atom moving out of range: energy and forces approach their values without it."""
    cutoff = arch.hypers.cutoff

    def at(distance_A):
        atoms = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [0.0, distance_A, 0.0]])
        return energy_forces(arch, model, atoms)

    inner, outer, far = at(cutoff - 1e-4), at(cutoff + 1e-4), at(cutoff + 3.0)
    assert outer[0] == far[0]  # beyond the cutoff the position of the atom does not matter
    assert abs(inner[0] - outer[0]) < 1e-9
    np.testing.assert_allclose(inner[1], outer[1], atol=1e-6)
    assert abs(at(cutoff - 1.0)[0] - far[0]) > 1e-4  # ... and the atom does interact inside


def test_k_nearest_energy_jumps_when_neighbour_ranking_changes():
    """Documented limitation: with k_nearest the bond set, hence the energy, changes discontinuously."""
    arch = AlignnArchitecture(AlignnHypers(**{**TINY, "neighbor_strategy": "k_nearest", "max_neighbors": 1}))
    model = arch.build_model(tiny_stats([1, 8]), seed=4)

    def energy(distance_A):  # the first H bonds to the second H or to the O, whichever is nearer
        atoms = Atoms("HHO", positions=[[0, 0, 0], [1.0, 0, 0], [0, distance_A, 0]])
        return energy_forces(arch, model, atoms)[0]

    assert abs(energy(1.0 - 1e-6) - energy(1.0 + 1e-6)) > 1e-4


def test_invariance_with_unequal_structures_in_one_batch(arch, model, ethanol, water):
    """Structures in a batch do not see each other (per-row normalisation, offsets of graph indices)."""
    alone = [energy_forces(arch, model, atoms) for atoms in (ethanol, water)]
    together = arch.predict(model, arch.collate([arch.featurize(ethanol), arch.featurize(water)]))
    np.testing.assert_allclose(together["energy"].numpy(), [alone[0][0], alone[1][0]], rtol=1e-13)
    np.testing.assert_allclose(together["forces"].numpy(), np.concatenate([alone[0][1], alone[1][1]]), atol=1e-12)


# ---------------------------------------------------------------- statistics, labels, errors

def test_update_statistics_keeps_weights(arch, model):
    weights_before = [p.detach().clone() for p in model.parameters()]
    norm_before = float(model.bond_norm)
    arch.update_statistics(model, tiny_stats([1, 6, 8], forces_rms=2.0, num_neighbors_mean=11.0))
    assert float(model.energy_scale_eV) == 2.0 and float(model.bond_norm) == norm_before == 6.0
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))
    assert float(model.angle_norm) == 5.0


def test_seeds_reproduce_and_differ(arch, ethanol):
    stats = tiny_stats([1, 6, 8])
    first, again, other = (energy_forces(arch, arch.build_model(stats, seed=s), ethanol)[0] for s in (11, 11, 12))
    assert first == again and first != other


def test_labels_and_unlabelled_structures(arch, water):
    labelled = water.copy()
    labelled.info[REF_ENERGY_KEY] = -14.5
    labelled.arrays[REF_FORCES_KEY] = np.arange(9.0).reshape(3, 3)
    batch = arch.collate([arch.featurize(labelled), arch.featurize(water)])
    assert batch.energy_eV.tolist() == [-14.5, 0.0]
    assert batch.energy_weight.tolist() == [1.0, 0.0] and batch.forces_weight.tolist() == [1.0, 0.0]
    assert batch.structure_index.tolist() == [0, 0, 0, 1, 1, 1]
    graph = batch.inputs.graph
    assert graph.bond_i[graph.num_bonds // 2:].min() == 3  # second structure's atoms are offset
    assert torch.equal(graph.bond_i[graph.triplet_src], graph.bond_i[graph.triplet_dst])


def test_unknown_element_is_an_input_error(arch, model):
    with pytest.raises(InputError, match=r"\[7\]"):
        energy_forces(arch, model, molecule("NH3"))


def test_hypers_from_settings_with_registry():
    cls = get_architecture_class("alignn")
    assert cls is AlignnArchitecture
    hypers = build_section(cls.Hypers, {"neighbor_strategy": "K_Nearest", "cutoff": 6, "gcn_layers": 3},
                           "ARCHITECTURE")
    assert hypers.neighbor_strategy == "k_nearest" and hypers.r_max == 6.0 and hypers.gcn_layers == 3
    assert AlignnArchitecture(hypers).cutoff_A == 6.0
    with pytest.raises(SettingsError, match="hidden_features"):
        build_section(cls.Hypers, {"hiden_features": 8}, "ARCHITECTURE")
    with pytest.raises(SettingsError, match="ARCHITECTURE.neighbor_strategy"):
        build_section(cls.Hypers, {"neighbor_strategy": "voronoi"}, "ARCHITECTURE")
    with pytest.raises(SettingsError, match="ARCHITECTURE.alignn_layers"):
        build_section(cls.Hypers, {"alignn_layers": 0, "gcn_layers": 0}, "ARCHITECTURE")


def test_export_load_and_ase_calculator(arch, model, ethanol, tmp_path):
    loaded = check_export_round_trip(arch, model, ethanol, tmp_path / "model" / "alignn_1.model",
                                     load=load_exported, calculator=AlignnCalculator, label="ALIGNN")
    assert loaded.species == [1, 6, 8]


# ---------------------------------------------------------------- the shared conformance suite, through the engine

class TestAlignnConformance(ArchitectureConformance):
    model_name = "ALIGNN"

    @pytest.fixture
    def tiny_hypers(self) -> AlignnHypers:
        return AlignnHypers(**TINY)
