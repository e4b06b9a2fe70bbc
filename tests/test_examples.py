"""The worked examples under settings/ (quick_example, examples/cu_npt, examples/two_molecules) load as shipped:
settings and geometries are validated as FHI_AL does before a run (nothing is run or written)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fhi_al.cli import prepare_context

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"quick_example": REPO / "settings" / "quick_example",
            "cu_npt": REPO / "settings" / "examples" / "cu_npt",
            "two_molecules": REPO / "settings" / "examples" / "two_molecules"}


def copied(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(EXAMPLES[name], folder)
    return folder


def _files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def test_every_example_folder_is_listed():
    assert sorted(p.name for p in (REPO / "settings" / "examples").iterdir()) == ["cu_npt", "two_molecules"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_settings_and_geometries_load_without_writing(name, tmp_path):
    folder = copied(name, tmp_path)
    before = _files(folder)
    context = prepare_context(folder)
    assert _files(folder) == before
    assert context.settings.al.active_learning.ensemble_size == 2
    assert context.settings.mace.misc.device == "cpu"


def test_cu_npt_is_a_periodic_metal_under_mtk_npt_with_stress(tmp_path):
    context = prepare_context(copied("cu_npt", tmp_path))
    (system,) = context.systems
    assert system.atoms.get_chemical_formula() == "Cu32" and system.atoms.pbc.all()
    assert system.atoms.get_volume() / len(system.atoms) == pytest.approx(3.61 ** 3 / 4)  # fcc, a = 3.61 Å
    md = context.settings.al.md
    assert (md.stat_ensemble, md.barostat, md.pressure) == ("NPT", "mtk", 1.0e5)  # 1 bar in Pa
    assert context.settings.calculator == "emt" and context.settings.mace.general.compute_stress


def test_two_molecules_is_a_geometry_folder_of_two_systems_with_gfn2_xtb(tmp_path):
    context = prepare_context(copied("two_molecules", tmp_path))
    assert [(s.name, s.atoms.get_chemical_formula()) for s in context.systems] == [("methanol", "CH4O"),
                                                                                  ("water", "H2O")]
    assert not any(s.atoms.pbc.any() for s in context.systems)
    assert context.settings.al.md.stat_ensemble == "NVT"
    assert context.settings.calculator == "xtb" and context.settings.al.reference.xtb.method == "GFN2-xTB"
    assert context.settings.al.active_learning.num_trajectories >= len(context.systems)  # every system runs


def test_run_example_refuses_an_unknown_example(tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts" / "run_example.sh"), "no_such_example"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no example 'no_such_example'" in result.stderr and "cu_npt" in result.stderr
    assert not (REPO / "example_run_no_such_example").exists()
