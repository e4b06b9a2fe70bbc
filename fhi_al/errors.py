"""Exception classes shared by the whole package and the exit codes the command line maps them to.

`InputError` and its subclasses are the user's to fix (exit status 2, a one-paragraph message, no
traceback); `ReferenceError` is a failed reference calculation that procedures catch and log.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3


class FhiAlError(Exception):
    """Base class of every error fhi_al raises on purpose."""


class InputError(FhiAlError):
    """Something the user gave (a settings key, a file, an argument) is not usable.

    `where` names the key (dotted path) or the file, so the message can say exactly what to fix.
    """

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class SettingsError(InputError):
    """A key in mace_settings.yaml or active_learning_settings.yaml is unknown, mistyped or out of range."""


class RunLockedError(FhiAlError):
    """Another fhi_al process is running in the same folder."""


class ReferenceError(FhiAlError):  # noqa: A001 - the name users catch, scoped to fhi_al.errors
    """A reference calculation failed: SCF not converged, library error, timeout or non-finite results."""

    def __init__(self, message: str, *, calculator: str = "", structure: str = ""):
        self.calculator = calculator
        self.structure = structure
        details = ", ".join(part for part in (calculator and f"calculator {calculator}",
                                              structure and f"structure {structure}") if part)
        super().__init__(f"{message} ({details})" if details else message)


ReferenceCalculationError = ReferenceError
