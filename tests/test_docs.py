"""The README stays true: its glossary is the schema's, its test command is what CI runs, its figures exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_glossary_is_generated_from_the_schema():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "make_glossary.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, "README glossary is stale: run python scripts/make_glossary.py"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert commands[:2] == ["bash scripts/setup_venv.sh && bash scripts/run_example.sh", "bash scripts/run_tests.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))] == [commands[1]]


def test_every_key_of_the_original_tool_is_documented():
    readme = (REPO / "README.md").read_text()
    for key in ("desired_acc", "lambda", "n_samples", "valid_ratio", "converge_initial", "converge_al",
                "converge_best", "scheduler_initial", "max_initial_epochs", "max_epochs_worker", "max_final_epochs",
                "intermediate_epochs", "patience", "max_MD_steps", "max_set_size", "valid_skip", "analysis_skip",
                "ensemble_size", "c_x", "dataset_dir", "skip_step_initial", "skip_step_mlff", "num_trajectories",
                "species_dir", "aims_lib_path", "margin", "analysis", "initial_sampling",
                "initial_foundational_size", "parallel", "uncert_not_crossed_limit", "stat_ensemble", "thermostat",
                "temperature", "timestep", "friction", "seed", "create_restart"):
        assert f"| `{key}` |" in readme, key


def test_readme_images_exist():
    readme = (REPO / "README.md").read_text()
    for image in re.findall(r"\]\((readme_figs/[^)]+)\)", readme):
        assert (REPO / image).is_file(), image
