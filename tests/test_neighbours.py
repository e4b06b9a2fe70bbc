"""fhi_al.neighbours gives exactly ASE's neighbour list (pairs, distances, cell shifts) for molecules, bulk
crystals and slabs, from matscipy's linear-scaling cell lists."""

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from fhi_al.neighbours import neighbour_list


def _sorted_pairs(i, j, d, S):
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    return i[order], j[order], d[order], S[order]


def _molecule_in_small_box():
    atoms = molecule("CH3CH2OH")
    atoms.set_cell([3.0, 3.0, 3.0])  # a cell without periodicity, the atoms partly outside it
    atoms.positions += 10.0
    return atoms


def _slab_without_third_vector():
    slab = fcc111("Cu", (3, 3, 3), vacuum=5.0)
    slab.pbc = [True, True, False]
    slab.cell[2] = 0.0
    return slab


@pytest.mark.parametrize("make", [
    lambda: molecule("CH3CH2OH"), _molecule_in_small_box, lambda: bulk("Cu", "fcc", 3.6, cubic=True) * (2, 2, 2),
    lambda: bulk("Si"), lambda: fcc111("Cu", (3, 3, 3), vacuum=5.0, periodic=False), _slab_without_third_vector,
    lambda: molecule("H2O")[:1],
], ids=["molecule", "molecule-in-box", "Cu-bulk", "Si-2-atom-cell", "slab", "slab-2-vectors", "one-atom"])
@pytest.mark.parametrize("cutoff_A", [3.0, 5.0])
def test_same_pairs_distances_and_shifts_as_ase(make, cutoff_A):
    atoms = make()
    ours = _sorted_pairs(*neighbour_list("ijdS", atoms, cutoff_A))
    reference = _sorted_pairs(*ase_neighbor_list("ijdS", atoms, cutoff_A))
    assert len(ours[0]) == len(reference[0])
    for mine, theirs in zip(ours, reference):
        np.testing.assert_allclose(mine, theirs, atol=1e-10)
    if len(atoms) > 1:
        assert len(ours[0]) > 0


def test_periodic_direction_without_a_vector_is_refused():
    atoms = bulk("Cu", "fcc", 3.6, cubic=True)
    atoms.cell[2] = 0.0
    with pytest.raises(ValueError, match="periodic direction 2"):
        neighbour_list("ij", atoms, 3.0)
