"""Console and log-file hygiene: known library noise hidden, other warnings shown; only the root rank logs,
except a rank about to end the job."""

from __future__ import annotations

import logging
import warnings

from fhi_al.logs import KNOWN_NOISE, quiet_known_warnings


def test_known_library_noise_is_hidden_and_other_warnings_show():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        for text in KNOWN_NOISE:
            warnings.warn(f"{text} and more words", UserWarning)
        warnings.warn("The TorchScript compiler found a real problem", UserWarning)
        warnings.warn("Langevin: invalid value encountered", RuntimeWarning)
    assert [str(w.message) for w in caught] == ["The TorchScript compiler found a real problem",
                                                "Langevin: invalid value encountered"]


def test_other_ranks_are_heard_only_when_they_end_the_job(monkeypatch):
    from types import SimpleNamespace

    from fhi_al import parallel

    def record(level: int) -> logging.LogRecord:
        return logging.LogRecord("fhi_al.test", level, __file__, 1, "message", None, None)

    root_only = parallel.RootOnlyFilter()
    for rank, passes in ((0, [True, True, True]), (1, [False, False, True])):
        monkeypatch.setattr(parallel, "world", lambda rank=rank: SimpleNamespace(rank=rank))
        assert [root_only.filter(record(level)) for level in (logging.INFO, logging.ERROR, logging.CRITICAL)] == passes
