"""Console scripts FHI_AL, FHI_AL-initial-ds, FHI_AL-al, FHI_AL-atomic-energies and FHI_AL-relabel: parse,
validate, dispatch.

Every input is validated before anything is written; user errors exit with status 2 and a one-paragraph
message on stderr (no traceback), a folder locked by another run exits 3, Ctrl-C exits 130. A full disk
(or quota) while writing exits 2 as well: free space and rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .context import RunContext
from .errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_LOCKED, EXIT_OK, FhiAlError, InputError, RunLockedError
from .labeling import run_procedure
from .logs import DETAIL, captured_prints, configure_logging, quiet_known_warnings
from .memory import keep_freed_memory
from .parallel import check_ranks, configure_threads, is_root, root_only, world
from .references import Ledger, reference_from_settings
from .references.ledger import LABEL, RELABEL, ledger_path
from .restart import RunLock
from .settings import load_run_settings
from .settings.exploration import check_cv_atoms
from .settings.machine import check_stress_inputs
from .systems import atomic_numbers, check_run_settings, load_systems, with_controls

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


# ------------------------------------------------------------------------------------------ procedures
# The procedures' modules load torch, so each is imported when its console script runs it.

def _initial_dataset() -> Callable[[RunContext], Any]:
    from .procedures.initial_dataset import run

    return run


def _active_learning() -> Callable[[RunContext], Any]:
    from .procedures.active_learning import run

    return run


def _member_training() -> Callable[[RunContext, Any], Any]:
    from .procedures.member_ranks import serve_members

    return serve_members


def _atomic_energies() -> Callable[[RunContext], Any]:
    from .procedures.atomic_energies import run

    return run


def _relabel() -> Callable[[RunContext], Any]:
    from .procedures.relabel import run

    return run


@dataclass(frozen=True)
class Procedure:
    """One step a console script runs: its log file logs/<log_name>.log and how it meets the ranks."""

    title: str  # for the console, e.g. "initial dataset"
    log_name: str
    load: Callable[[], Callable[[RunContext], Any]]  # -> the procedure's run(context)
    runs_on_all_ranks: bool = False  # True: every rank runs it (its reference calls are collective);
    # False: the ML rank runs it with the labelling service's reference and label queue, the others serve
    label_purpose: str = LABEL  # the ledger purpose of the labels it computes
    load_training: Callable[[], Callable[[RunContext, Any], Any]] | None = None  # -> serve(context, comm) of the
    # training ranks (ACTIVE_LEARNING.ml_ranks > 1); None: they wait for the end


INITIAL_DATASET = Procedure("initial dataset", log_name="initial_dataset", load=_initial_dataset)
ACTIVE_LEARNING = Procedure("active learning", log_name="AL", load=_active_learning, load_training=_member_training)  # logs/AL.log, as the original
ATOMIC_ENERGIES = Procedure("atomic energies", log_name="atomic_energies", load=_atomic_energies,
                            runs_on_all_ranks=True)
RELABEL_PROCEDURE = Procedure("relabelling", log_name="relabel", load=_relabel, label_purpose=RELABEL)

# console script -> the procedures it runs, in order
SCRIPTS: dict[str, tuple[Procedure, ...]] = {
    "FHI_AL": (INITIAL_DATASET, ACTIVE_LEARNING),
    "FHI_AL-initial-ds": (INITIAL_DATASET,),
    "FHI_AL-al": (ACTIVE_LEARNING,),
    "FHI_AL-atomic-energies": (ATOMIC_ENERGIES,),
    "FHI_AL-relabel": (RELABEL_PROCEDURE,),
}


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="folder with mace_settings.yaml, active_learning_settings.yaml and geometry.in "
                             "(default: the current folder); all output goes here")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=None,
                        help="log level (default: MISC.log_level of mace_settings.yaml)")
    return parser


def check_run_dir(run_dir: Path) -> Path:
    run_dir = run_dir.expanduser().resolve()
    if not run_dir.exists():
        raise InputError("run folder does not exist", where=str(run_dir))
    if not run_dir.is_dir():
        raise InputError("--run-dir must be a folder, this is a file", where=str(run_dir))
    if not os.access(run_dir, os.R_OK | os.W_OK | os.X_OK):
        raise InputError("run folder is not readable and writable by this user", where=str(run_dir))
    return run_dir


def prepare_context(run_dir: Path, *, log_level: str | None = None):
    """Validate settings, the systems' geometries and (for aims) control.in + species_dir; write nothing."""
    comm = world()
    run_dir = check_run_dir(run_dir)
    settings = load_run_settings(run_dir)
    misc = settings.al.misc
    systems = load_systems(misc.path_to_geometry, run_dir)
    al = settings.al.active_learning
    check_run_settings(systems, al)
    check_ranks(size=comm.size, parallel=al.parallel, group_size=al.reference_group_size, ml_ranks=al.ml_ranks,
                ensemble_size=al.ensemble_size)
    for system in systems:
        check_stress_inputs(settings, system.atoms.pbc, system.atoms.cell.volume)
    check_foundation(settings, systems)
    check_md_ensemble(settings, systems)
    check_cv_atoms(settings.al, lambda index: len(systems[index % len(systems)].atoms))
    check_given_datasets(settings, systems, run_dir)
    if settings.calculator == "aims":
        systems = with_controls(systems, misc.path_to_control, run_dir,
                                species_dir=settings.al.active_learning.species_dir)
    return RunContext(run_dir=run_dir, settings=settings, systems=tuple(systems), comm=comm,
                      log_level=log_level or settings.mace.misc.log_level)


def check_md_ensemble(settings, systems) -> None:
    """NPT changes the cell: every MD block asking for it needs periodic structures. A per-trajectory entry
    MD.<i> runs on system i mod n; the plain block and MD.0 (also the initial dataset's MD) on every system."""
    for key, md in settings.al.md_entries():
        if md.stat_ensemble != "NPT":
            continue
        index = key.rpartition(".")[2]
        runs_on = [systems[int(index) % len(systems)]] if index.isdigit() and index != "0" else systems
        for system in runs_on:
            if not system.atoms.pbc.all():
                raise InputError(f"NPT needs a structure periodic in all three directions (three lattice_vector "
                                 f"lines), but {system.path.name if system.path else system.name} is not; use NVT for a molecule or a slab",
                                 where=f"{key}.stat_ensemble")


def check_foundation(settings, systems) -> None:
    """ARCHITECTURE.foundation_model (if any) loads, is a MACE model and covers the systems' elements."""
    if settings.mace.architecture.foundation_model is None:
        return
    from .architectures.mace.foundation import check_run_inputs  # torch and mace: only when a foundation is used
    from .training.config import DTYPES

    numbers = sorted(atomic_numbers(systems))
    check_run_inputs(settings.mace.architecture, numbers, dtype=DTYPES[settings.mace.general.default_dtype])


def check_given_datasets(settings, systems, run_dir: Path) -> None:
    """ACTIVE_LEARNING.initial_train_dataset / initial_valid_dataset (if given) are readable, labelled (REF_energy,
    REF_forces) and hold only the systems' elements; a mapping names every member tag."""
    al = settings.al.active_learning
    if al.initial_train_dataset is None and al.initial_valid_dataset is None:
        return
    from .data.given import read_given
    from .ensemble import ensemble_seeds  # torch: only when datasets are given
    from .procedures.common import SHARED_TAG
    from .training.engine import member_tag

    general = settings.mace.general
    tags = [member_tag(general.name_exp, seed) for seed in ensemble_seeds(general.seed, al.ensemble_size)]
    read_given(al, run_dir=run_dir, elements=atomic_numbers(systems), tags=tags, shared_tag=SHARED_TAG)


def _start_logging(context: RunContext, procedure: Procedure, printed: Sequence[str] = ()) -> None:
    """The procedure's log file gets every record; the console one line saying where it is, and the settings
    notes (accepted-but-unused keys) as one count (each note is in the log file; on the console at DEBUG)."""
    configure_threads()
    keep_freed_memory()
    log_file = context.path(context.settings.mace.general.log_dir) / f"{procedure.log_name}.log"
    configure_logging(log_file, level=context.log_level)
    shown = log_file.relative_to(context.run_dir) if log_file.is_relative_to(context.run_dir) else log_file
    log.info("%s in %s (full log: %s).", procedure.title.capitalize(), context.run_dir, shown)
    for line in printed:
        log.info("printed while loading the libraries: %s", line, extra=DETAIL)
    for note in context.settings.notes:
        log.info("settings: %s", note, extra=DETAIL)
    if context.settings.notes:
        log.info("settings: %d keys are ignored or read elsewhere (listed in %s).", len(context.settings.notes),
                 shown)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """The run folder's lock, held by rank 0 for the whole command; a refusal reaches every rank."""
    lock = RunLock(run_dir)
    root_only(lock.acquire)()
    try:
        yield
    finally:
        root_only(lock.release)()


def run_step(procedure: Procedure, run: Callable[[RunContext], Any], context: RunContext) -> None:
    """Run one procedure (`run`, from procedure.load()): on every rank when it handles ranks itself, else
    through the labelling service, which gives the ML rank the reference and label queue and makes the other
    ranks serve the reference."""
    if procedure.runs_on_all_ranks:
        run(context)
        return
    al = context.settings.al.active_learning

    def make_reference(comm, group_index: int):
        work_dir = context.run_dir if group_index == 0 else context.run_dir / f"reference_group_{group_index}"
        return reference_from_settings(context.settings, work_dir, comm, context.control,
                                       system_controls=context.system_controls())

    serve = procedure.load_training() if procedure.load_training is not None else None
    run_procedure(lambda services: run(context.with_services(services)), make_reference=make_reference,
                  reference_name=context.settings.calculator, parallel=al.parallel,
                  group_size=al.reference_group_size, ml_ranks=al.ml_ranks,
                  serve_training=None if serve is None else lambda comm: serve(context, comm),
                  timeout_s=al.reference_timeout_s,
                  ledger=Ledger(ledger_path(context.run_dir), label_purpose=procedure.label_purpose))


def _report(message: str) -> None:
    if is_root():
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()


def run_procedures(prog: str, argv: Sequence[str] | None, description: str) -> int:
    """Run the procedures of console script `prog` (see SCRIPTS) -> its exit status."""
    procedures = SCRIPTS[prog]
    parser = build_parser(prog, description)
    if prog == "FHI_AL-relabel":
        add_relabel_arguments(parser)
    args = parser.parse_args(argv)
    quiet_known_warnings()
    printed: list[str] = []
    try:
        context = prepare_context(args.run_dir or Path.cwd(), log_level=args.log_level)
        if prog == "FHI_AL-relabel":
            context = relabel_context(context, args)
        with captured_prints(printed):  # mace prints a note on stdout when it is imported
            runs = [procedure.load() for procedure in procedures]
        with run_lock(context.run_dir):
            for procedure, run in zip(procedures, runs):
                _start_logging(context, procedure, printed)
                run_step(procedure, run, context)
    except InputError as error:
        _report(str(error))
        return EXIT_BAD_INPUT
    except RunLockedError as error:
        _report(str(error))
        return EXIT_LOCKED
    except KeyboardInterrupt:
        _report("interrupted; rerun the same command to resume")
        return EXIT_INTERRUPTED
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        log.error("%s stopped: %s", prog, error)
        _report(f"{error.filename or 'a file of the run folder'}: cannot write ({error.strerror}); free disk space "
                f"(or raise the quota) and rerun the same command to resume, everything stored so far is kept")
        return EXIT_BAD_INPUT
    except FhiAlError as error:
        log.exception("%s failed", prog)
        _report(str(error))
        return EXIT_FAILURE
    return EXIT_OK


def main_full(argv: Sequence[str] | None = None) -> int:
    """FHI_AL: initial dataset, then active learning, in the run folder."""
    return run_procedures("FHI_AL", argv, main_full.__doc__)


def main_initial_dataset(argv: Sequence[str] | None = None) -> int:
    """FHI_AL-initial-ds: build the initial dataset and ensemble only."""
    return run_procedures("FHI_AL-initial-ds", argv, main_initial_dataset.__doc__)


def main_active_learning(argv: Sequence[str] | None = None) -> int:
    """FHI_AL-al: active learning starting from an existing initial dataset and ensemble."""
    return run_procedures("FHI_AL-al", argv, main_active_learning.__doc__)


def main_atomic_energies(argv: Sequence[str] | None = None) -> int:
    """FHI_AL-atomic-energies: isolated-atom energies of every element of geometry.in with the reference."""
    return run_procedures("FHI_AL-atomic-energies", argv, main_atomic_energies.__doc__)


def main_relabel(argv: Sequence[str] | None = None) -> int:
    """FHI_AL-relabel: recompute every frame of the run's datasets with another reference (or other settings)."""
    return run_procedures("FHI_AL-relabel", argv, main_relabel.__doc__)


def add_relabel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference-settings", type=Path, required=True,
                        help="an active_learning_settings-style YAML file whose REFERENCE section (and, for aims, "
                             "ACTIVE_LEARNING.species_dir/aims_lib_path and MISC.path_to_control) gives the new "
                             "reference")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder of the relabelled datasets, relative to the run folder (default: data_relabel)")


def relabel_context(context: RunContext, args: argparse.Namespace) -> RunContext:
    """The run's context with the reference of --reference-settings and the relabel request; writes nothing."""
    from .procedures.relabel import DEFAULT_OUTPUT_DIR, RelabelRequest
    from .settings.relabel import reference_settings

    path = args.reference_settings.expanduser().resolve()
    settings = reference_settings(context.settings, path)
    output_dir = context.path(args.output_dir or DEFAULT_OUTPUT_DIR).resolve()
    if output_dir == context.path(settings.al.active_learning.dataset_dir).resolve():
        raise InputError("the relabelled datasets cannot replace the run's own; choose another folder",
                         where="--output-dir")
    systems = context.systems
    if settings.calculator == "aims":  # control.in files next to the reference settings, one per system or shared
        systems = with_controls(systems, settings.al.misc.path_to_control, path.parent,
                                species_dir=settings.al.active_learning.species_dir)
    return dataclasses.replace(context, settings=settings, systems=tuple(systems),
                               arguments=RelabelRequest(output_dir=output_dir, reference_settings=path))
