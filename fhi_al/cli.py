"""Console scripts FHI_AL, FHI_AL-initial-ds, FHI_AL-al and FHI_AL-atomic-energies: parse, validate, dispatch.

Every input is validated before anything is written; user errors exit with status 2 and a one-paragraph
message on stderr (no traceback), a folder locked by another run exits 3, Ctrl-C exits 130. A full disk
(or quota) while writing exits 2 as well: free space and rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

from .errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_LOCKED, EXIT_OK, FhiAlError, InputError, RunLockedError

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PROCEDURE_PACKAGE = "fhi_al.procedures"


class ProcedureUnavailable(FhiAlError):
    """The procedure a console script runs is not part of this version yet."""


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
    """Validate settings, geometry and (for aims) control.in + species_dir; write nothing. -> RunContext."""
    from . import inputs
    from .context import RunContext
    from .parallel import world
    from .settings import load_run_settings

    comm = world()
    run_dir = check_run_dir(run_dir)
    settings = load_run_settings(run_dir)
    geometry = inputs.read_geometry(run_dir / settings.al.misc.path_to_geometry)
    control = None
    if settings.calculator == "aims":
        control = inputs.load_aims_inputs(run_dir / settings.al.misc.path_to_control,
                                          settings.al.active_learning.species_dir, geometry)
    return RunContext(run_dir=run_dir, settings=settings, geometry=geometry, control=control, comm=comm,
                      log_level=log_level or settings.mace.misc.log_level)


def procedure_module(step: str, prog: str) -> ModuleType:
    """fhi_al.procedures.<step>, or ProcedureUnavailable when this version does not have it yet."""
    name = f"{PROCEDURE_PACKAGE}.{step}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
    raise ProcedureUnavailable(f"{prog}: the {step.replace('_', ' ')} procedure ({name}) lands in a later "
                               f"version of fhi_al; the inputs are valid but nothing was run.")


def _start_logging(context, module: ModuleType, step: str, printed: Sequence[str] = ()) -> None:
    """The step's log file gets every record; the console one line saying where it is, and the settings notes
    (accepted-but-unused keys) as one count (each note is in the log file; on the console at DEBUG)."""
    from .logs import DETAIL, configure_logging
    from .memory import keep_freed_memory
    from .parallel import configure_threads

    configure_threads()
    keep_freed_memory()
    log_file = context.path(context.settings.mace.general.log_dir) / f"{getattr(module, 'LOG_NAME', step)}.log"
    configure_logging(log_file, level=context.log_level)
    shown = log_file.relative_to(context.run_dir) if log_file.is_relative_to(context.run_dir) else log_file
    log.info("%s in %s (full log: %s).", step.replace("_", " ").capitalize(), context.run_dir, shown)
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
    from .parallel import root_only
    from .restart import RunLock

    lock = RunLock(run_dir)
    root_only(lock.acquire)()
    try:
        yield
    finally:
        root_only(lock.release)()


def run_step(module: ModuleType, context) -> None:
    """Run one procedure: on every rank when it handles ranks itself, else through fhi_al.parallel, which
    gives the ML rank the reference and label queue and makes the other ranks serve the reference."""
    if getattr(module, "RUNS_ON_ALL_RANKS", False):
        module.run(context)
        return
    from . import parallel
    from .procedures.common import ledger_path
    from .references.base import reference_from_settings
    from .references.ledger import Ledger

    al = context.settings.al.active_learning

    def make_reference(comm, group_index: int):
        work_dir = context.run_dir if group_index == 0 else context.run_dir / f"reference_group_{group_index}"
        return reference_from_settings(context.settings, work_dir, comm, context.control)

    make_reference.reference_name = context.settings.calculator
    parallel.run_procedure(lambda services: module.run(context.with_services(services)),
                           make_reference=make_reference, parallel=al.parallel, group_size=al.reference_group_size,
                           timeout_s=al.reference_timeout_s, ledger=Ledger(ledger_path(context.run_dir)))


def _report(message: str) -> None:
    from .parallel import is_root

    if is_root():
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()


def run_procedures(prog: str, steps: Sequence[str], argv: Sequence[str] | None, description: str) -> int:
    args = build_parser(prog, description).parse_args(argv)
    from .logs import captured_prints, quiet_known_warnings

    quiet_known_warnings()
    printed: list[str] = []
    try:
        context = prepare_context(args.run_dir or Path.cwd(), log_level=args.log_level)
        with captured_prints(printed):
            modules = [procedure_module(step, prog) for step in steps]
        with run_lock(context.run_dir):
            for step, module in zip(steps, modules):
                _start_logging(context, module, step, printed)
                run_step(module, context)
    except InputError as error:
        _report(str(error))
        return EXIT_BAD_INPUT
    except ProcedureUnavailable as error:
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
    return run_procedures("FHI_AL", ["initial_dataset", "active_learning"], argv, main_full.__doc__)


def main_initial_dataset(argv: Sequence[str] | None = None) -> int:
    """FHI_AL-initial-ds: build the initial dataset and ensemble only."""
    return run_procedures("FHI_AL-initial-ds", ["initial_dataset"], argv, main_initial_dataset.__doc__)


def main_active_learning(argv: Sequence[str] | None = None) -> int:
    """FHI_AL-al: active learning starting from an existing initial dataset and ensemble."""
    return run_procedures("FHI_AL-al", ["active_learning"], argv, main_active_learning.__doc__)


def main_atomic_energies(argv: Sequence[str] | None = None) -> int:
    """FHI_AL-atomic-energies: isolated-atom energies of every element of geometry.in with the reference."""
    return run_procedures("FHI_AL-atomic-energies", ["atomic_energies"], argv, main_atomic_energies.__doc__)
