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
"$repo/.venv/bin/FHI_AL"
echo "Done: models in example_run/model/, datasets in example_run/data/, plots in example_run/results/."
