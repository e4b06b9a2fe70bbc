"""Console scripts FHI_AL, FHI_AL-initial-ds, FHI_AL-al and FHI_AL-atomic-energies: parse, validate, dispatch.

Every input is validated before anything is written; user errors exit with status 2 and a one-paragraph
message on stderr (no traceback), a folder locked by another run exits 3, Ctrl-C exits 130. A full disk
(or quota) while writing exits 2 as well: free space and rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import contextlib
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
from .parallel import configure_threads, is_root, root_only, world
from .references import Ledger, reference_from_settings
from .references.ledger import ledger_path
from .restart import RunLock
from .settings import load_run_settings
from .systems import check_run_settings, load_systems, with_controls

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


def _atomic_energies() -> Callable[[RunContext], Any]:
    from .procedures.atomic_energies import run

    return run


@dataclass(frozen=True)
class Procedure:
    """One step a console script runs: its log file logs/<log_name>.log and how it meets the ranks."""

    title: str  # for the console, e.g. "initial dataset"
    log_name: str
    load: Callable[[], Callable[[RunContext], Any]]  # -> the procedure's run(context)
    runs_on_all_ranks: bool = False  # True: every rank runs it (its reference calls are collective);
    # False: the ML rank runs it with the labelling service's reference and label queue, the others serve


INITIAL_DATASET = Procedure("initial dataset", log_name="initial_dataset", load=_initial_dataset)
ACTIVE_LEARNING = Procedure("active learning", log_name="AL", load=_active_learning)  # logs/AL.log, as the original
ATOMIC_ENERGIES = Procedure("atomic energies", log_name="atomic_energies", load=_atomic_energies,
                            runs_on_all_ranks=True)

# console script -> the procedures it runs, in order
SCRIPTS: dict[str, tuple[Procedure, ...]] = {
    "FHI_AL": (INITIAL_DATASET, ACTIVE_LEARNING),
    "FHI_AL-initial-ds": (INITIAL_DATASET,),
    "FHI_AL-al": (ACTIVE_LEARNING,),
    "FHI_AL-atomic-energies": (ATOMIC_ENERGIES,),
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
    check_run_settings(systems, settings.al.active_learning)
    check_foundation(settings, systems)
    if settings.calculator == "aims":
        systems = with_controls(systems, misc.path_to_control, run_dir,
                                species_dir=settings.al.active_learning.species_dir)
    return RunContext(run_dir=run_dir, settings=settings, systems=tuple(systems), comm=comm,
                      log_level=log_level or settings.mace.misc.log_level)


def check_foundation(settings, systems) -> None:
    """ARCHITECTURE.foundation_model (if any) loads, is a MACE model and covers the systems' elements."""
    if settings.mace.architecture.foundation_model is None:
        return
    from .architectures.mace.foundation import check_run_inputs  # torch and mace: only when a foundation is used
    from .training.config import DTYPES

    numbers = [n for system in systems for n in system.atoms.numbers]
    check_run_inputs(settings.mace.architecture, numbers, dtype=DTYPES[settings.mace.general.default_dtype])


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

    run_procedure(lambda services: run(context.with_services(services)), make_reference=make_reference,
                  reference_name=context.settings.calculator, parallel=al.parallel,
                  group_size=al.reference_group_size, timeout_s=al.reference_timeout_s,
                  ledger=Ledger(ledger_path(context.run_dir)))


def _report(message: str) -> None:
    if is_root():
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()


def run_procedures(prog: str, argv: Sequence[str] | None, description: str) -> int:
    """Run the procedures of console script `prog` (see SCRIPTS) -> its exit status."""
    procedures = SCRIPTS[prog]
    args = build_parser(prog, description).parse_args(argv)
    quiet_known_warnings()
    printed: list[str] = []
    try:
        context = prepare_context(args.run_dir or Path.cwd(), log_level=args.log_level)
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
