"""Logging set-up for the command-line tools: one log file per procedure, records from the root rank only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .parallel import RootOnlyFilter

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def configure_logging(log_file: Path | None = None, *, level: str = "INFO", console: bool = True) -> None:
    """Send fhi_al's records to `log_file` (appended) and to stderr, on the root rank only."""
    logger = logging.getLogger("fhi_al")
    logger.setLevel(level.upper())
    for handler in list(logger.handlers):
        if getattr(handler, "_fhi_al", False):
            logger.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = []
    if console:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    for handler in handlers:
        handler._fhi_al = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        handler.addFilter(RootOnlyFilter())
        logger.addHandler(handler)
    logger.propagate = False
