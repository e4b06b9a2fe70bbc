#!/usr/bin/env bash
# Copy the annotated example settings into example_run/ and run the example job there with GFN2-xTB.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
mkdir -p example_run
for f in geometry.in control.in mace_settings.yaml active_learning_settings.yaml; do
  [ -f "example_run/$f" ] || cp "settings/$f" "example_run/$f"
done
cd example_run
"$repo/.venv/bin/FHI_AL-atomic-energies"
