#!/usr/bin/env bash
# Install if needed, then run the whole test suite: serial tests, then the MPI tests under the venv's mpiexec.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/setup_venv.sh
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
bin=.venv/bin
"$bin/python" -m pytest -q -p no:cacheprovider tests "$@"
for ranks in 2 3; do
  set +e
  "$bin/mpiexec" -n "$ranks" "$bin/python" -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests "$@"
  status=$?
  set -e
  # 5: no MPI test needs this many ranks; that is not a failure.
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
done
