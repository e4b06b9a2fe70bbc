#!/usr/bin/env bash
# Run a worked example: isolated-atom energies, then the whole active-learning workflow.
#   bash scripts/run_example.sh                 quick example (ethanol, GFN2-xTB) in example_run/
#   bash scripts/run_example.sh cu_npt          settings/examples/cu_npt/ in example_run_cu_npt/
#   bash scripts/run_example.sh two_molecules   settings/examples/two_molecules/ in example_run_two_molecules/
# Rerunning resumes where it stopped.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
name=${1:-quick_example}
if [ "$name" = quick_example ]; then
  source_dir=settings/quick_example run_dir=example_run
else
  source_dir=settings/examples/$name run_dir=example_run_$name
fi
if [ ! -d "$source_dir" ]; then
  echo "error: no example '$name' (allowed: quick_example $(ls settings/examples | tr '\n' ' '))" >&2
  exit 2
fi
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
mkdir -p "$run_dir"
for f in "$source_dir"/*; do  # settings, geometry file or geometry folder: copied once, then the run's own
  [ -e "$run_dir/$(basename "$f")" ] || cp -r "$f" "$run_dir/"
done
cd "$run_dir"
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
echo "Done: models in $run_dir/model/, datasets in $run_dir/data/, plots in $run_dir/results/."
