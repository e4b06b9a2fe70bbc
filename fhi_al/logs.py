"""Logging set-up for the command-line tools: everything goes to one log file per procedure; the console shows
what a person follows (rounds, labels, warnings, summaries) and progress bars, and the detail only at DEBUG.

Records come from the root rank only (CRITICAL from any rank). A record logged with `extra=DETAIL` (per-epoch
lines, files written, members built) goes to the log file only unless the level is DEBUG; a warning repeated
with the same wording shows REPEATS_ON_CONSOLE times on the console, every time in the log file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

from .parallel import RootOnlyFilter, is_root

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
CONSOLE_FORMAT = "%(asctime)s %(message)s"
CONSOLE_DATE_FORMAT = "%H:%M:%S"
DETAIL_ATTRIBUTE = "fhi_al_detail"
DETAIL = {DETAIL_ATTRIBUTE: True}  # log.info(..., extra=DETAIL): the log file only, the console at DEBUG
REPEATS_ON_CONSOLE = 3
_NOTE_ATTRIBUTE = "fhi_al_console_note"

# Warnings of the pinned libraries that tell a user of fhi_al nothing, repeated at every model build or load.
KNOWN_NOISE = (
    "The TorchScript type system doesn't support instance-level annotations",  # e3nn's generated code
    "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected",  # mace's and e3nn's torch.load calls
)


@contextlib.contextmanager
def captured_prints(lines: list[str]) -> Iterator[None]:
    """Collect into `lines` what libraries print on stdout meanwhile (mace's note on cuequivariance when it is
    imported), so that it can go to the log file instead of the console."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        lines.extend(line for line in buffer.getvalue().splitlines() if line.strip())


def quiet_known_warnings() -> None:
    """Hide the warnings in KNOWN_NOISE (all others still show)."""
    for text in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=re.escape(text))


class ConsoleFilter(logging.Filter):
    """What reaches the console: no DETAIL records (unless `show_detail`), and a warning of one wording (logger
    and format string) only `repeats` times, the last of them with a note that the log file has the rest."""

    def __init__(self, *, show_detail: bool, repeats: int = REPEATS_ON_CONSOLE, log_file: Path | None = None):
        super().__init__()
        self.show_detail, self.repeats, self.log_file = show_detail, repeats, log_file
        self.counts: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.show_detail:
            return True
        if getattr(record, DETAIL_ATTRIBUTE, False):
            return False
        if record.levelno != logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        count = self.counts[key] = self.counts.get(key, 0) + 1
        if count == self.repeats:
            where = self.log_file.name if self.log_file is not None else "the log file"
            setattr(record, _NOTE_ATTRIBUTE, f" (shown {self.repeats} times here; further ones in {where} only)")
        return count <= self.repeats


class ConsoleFormatter(logging.Formatter):
    """Time and message; warnings and errors say their level; the repeat note of ConsoleFilter is appended."""

    def __init__(self):
        super().__init__(CONSOLE_FORMAT, CONSOLE_DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp = self.formatTime(record, self.datefmt)
            text = f"{stamp} {record.levelname}: {text[len(stamp) + 1:]}"
        return text + getattr(record, _NOTE_ATTRIBUTE, "")


class ConsoleHandler(logging.StreamHandler):
    """Writes through tqdm, so that a line printed while a progress bar is shown does not break the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise; handleError reports it
            self.handleError(record)


def configure_logging(log_file: Path | None = None, *, level: str = "INFO", console: bool = True) -> None:
    """Send fhi_al's records to `log_file` (appended, every record of `level` and above) and to stderr (the
    records a person follows; all of them at DEBUG), on the root rank only (CRITICAL from any rank)."""
    logger = logging.getLogger("fhi_al")
    logger.setLevel(level.upper())
    for handler in list(logger.handlers):
        if getattr(handler, "_fhi_al", False):
            logger.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = []
    if console:
        screen = ConsoleHandler(sys.stderr)
        screen.setFormatter(ConsoleFormatter())
        screen.addFilter(ConsoleFilter(show_detail=level.upper() == "DEBUG", log_file=log_file))
        handlers.append(screen)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
        handlers[-1].setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    for handler in handlers:
        handler._fhi_al = True  # type: ignore[attr-defined]
        handler.addFilter(RootOnlyFilter())
        logger.addHandler(handler)
    logger.propagate = False


def progress(*, total: int, desc: str, unit: str, initial: int = 0, disable: bool = False) -> Any:
    """A progress bar on stderr for long work (MD steps, epochs, labels); it clears itself when done. None is
    drawn when stderr is not a terminal (logs redirected to a file, batch jobs), off the root rank, or with
    `disable`; the returned object takes update() and set_postfix() either way."""
    from tqdm import tqdm

    off = disable or not is_root()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, file=sys.stderr,
                dynamic_ncols=True, disable=True if off else None)
