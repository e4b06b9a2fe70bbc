"""Console and log-file hygiene: known library noise hidden, other warnings shown; only the root rank logs,
except a rank about to end the job."""

from __future__ import annotations

import logging
import warnings

import pytest

from fhi_al.logs import DETAIL, KNOWN_NOISE, captured_prints, configure_logging, progress, quiet_known_warnings


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


@pytest.fixture
def fhi_al_logger():
    """configure_logging changes the package logger; put it back for the tests that follow."""
    logger = logging.getLogger("fhi_al")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def _emit_a_run(log: logging.Logger) -> None:
    log.info("Round 1: 8 labels")
    for epoch in range(1, 4):
        log.info("member epoch %d: loss %.3f", epoch, 1.0 / epoch, extra=DETAIL)
    for step in range(5):
        log.warning("trajectory 0 step %d: too hot; back to the last good frame", step)
    log.warning("another warning")


def test_console_shows_rounds_and_warnings_the_log_file_everything(tmp_path, capsys, fhi_al_logger):
    log_file = tmp_path / "logs" / "AL.log"
    configure_logging(log_file, level="INFO")
    _emit_a_run(logging.getLogger("fhi_al.procedures.test"))
    console = capsys.readouterr().err.splitlines()
    assert [line[9:] for line in console] == [
        "Round 1: 8 labels",
        "WARNING: trajectory 0 step 0: too hot; back to the last good frame",
        "WARNING: trajectory 0 step 1: too hot; back to the last good frame",
        "WARNING: trajectory 0 step 2: too hot; back to the last good frame (shown 3 times here; further ones in "
        "AL.log only)",
        "WARNING: another warning"]
    written = log_file.read_text()
    assert written.count(" epoch ") == 3 and written.count("too hot") == 5 and "shown 3 times" not in written
    assert "INFO    fhi_al.procedures.test: member epoch 2: loss 0.500" in written


def test_debug_brings_the_detail_back_to_the_console(tmp_path, capsys, fhi_al_logger):
    configure_logging(tmp_path / "run.log", level="DEBUG")
    _emit_a_run(logging.getLogger("fhi_al.procedures.test"))
    console = capsys.readouterr().err
    assert console.count(" epoch ") == 3 and console.count("too hot") == 5
    assert console.count("\n") == 10 == (tmp_path / "run.log").read_text().count("\n")


def test_progress_bars_only_on_a_terminal_of_the_root_rank(monkeypatch):
    from types import SimpleNamespace

    from fhi_al import parallel

    with progress(total=10, desc="epochs", unit="epoch") as bar:  # pytest's stderr is not a terminal
        bar.update(3)
        assert bar.disable
    monkeypatch.setattr(parallel, "world", lambda: SimpleNamespace(rank=1))
    with progress(total=10, desc="epochs", unit="epoch") as bar:
        assert bar.disable


def test_library_prints_are_captured_for_the_log():
    printed: list[str] = []
    with captured_prints(printed):
        print("cuequivariance or cuequivariance_torch is not available.")
        print()
    assert printed == ["cuequivariance or cuequivariance_torch is not available."]
