#!/usr/bin/env bash
# Run the quick example (ethanol, GFN2-xTB, an ensemble of 2 small MACE models) in example_run/:
# isolated-atom energies, then the whole active-learning workflow. Rerunning resumes where it stopped.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
mkdir -p example_run
for f in geometry.in mace_settings.yaml active_learning_settings.yaml; do
  [ -f "example_run/$f" ] || cp "settings/quick_example/$f" "example_run/$f"
done
cd example_run
"$repo/.venv/bin/FHI_AL-atomic-energies"
# Paste the isolated-atom energies under ARCHITECTURE (once), as the header of atomic_energies.yaml asks.
"$repo/.venv/bin/python" - <<'PY'
from pathlib import Path

settings = Path("mace_settings.yaml")
text = settings.read_text()
if "atomic_energies:" not in text:
    block = Path("atomic_energies.yaml").read_text().split("atomic_energies:", 1)[1]
    pasted = "  atomic_energies:" + "".join(f"\n  {line}" for line in block.strip("\n").splitlines()) + "\n"
    settings.write_text(text.replace("ARCHITECTURE:\n", "ARCHITECTURE:\n" + pasted, 1))
PY
"$repo/.venv/bin/FHI_AL"
echo "Done: models in example_run/model/, datasets in example_run/data/, plots in example_run/results/."
