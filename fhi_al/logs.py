"""Logging set-up for the command-line tools: one log file per procedure, records from the root rank only."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

from .parallel import RootOnlyFilter

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# Warnings of the pinned libraries that tell a user of fhi_al nothing, repeated at every model build or load.
KNOWN_NOISE = (
    "The TorchScript type system doesn't support instance-level annotations",  # e3nn's generated code
    "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected",  # mace's and e3nn's torch.load calls
)


def quiet_known_warnings() -> None:
    """Hide the warnings in KNOWN_NOISE (all others still show)."""
    for text in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=re.escape(text))


def configure_logging(log_file: Path | None = None, *, level: str = "INFO", console: bool = True) -> None:
    """Send fhi_al's records to `log_file` (appended) and to stderr, on the root rank only (CRITICAL from any rank)."""
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
