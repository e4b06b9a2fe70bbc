"""Why training stopped: converged (patience and margin met), stopped at the epoch limit while still improving,
or early-stopped; the engine's log line and the procedures' summary line carry the same wording."""

from __future__ import annotations

import logging
import math

import pytest
from ase.build import molecule

from conformance import emt_labelled
from fhi_al.architectures.mace.hypers import MaceHypers
from fhi_al.procedures import reporting
from fhi_al.training.config import TrainingConfig
from fhi_al.training.engine import Trainer
from fhi_al.training.stopping import StopReason, TrainingStop

TINY = MaceHypers(num_channels=8, max_L=0, r_max=4.0, num_interactions=1, correlation=1, radial_MLP=[8])


@pytest.fixture(scope="module")
def data():
    return emt_labelled(molecule("CH3CH2OH"), 4, seed=21), emt_labelled(molecule("CH3CH2OH"), 2, seed=22)


def make(run_dir, data, **overrides):
    config = TrainingConfig(name_exp="stop", hypers=TINY, batch_size=2, valid_batch_size=2, scheduler="none",
                            lr=0.01, training_plots=False, **overrides)
    trainer = Trainer(config, run_dir)
    return trainer, trainer.create_member("stop_1", 1, list(data[0]), list(data[1]))


def test_epoch_limit_while_improving_is_not_convergence(run_dir, data, caplog):
    trainer, member = make(run_dir, data)
    with caplog.at_level(logging.INFO, logger="fhi_al"):
        stop = trainer.converge(member, max_epochs=3, patience=50, margin=0.0)
    assert stop.reason is StopReason.MAX_EPOCHS and not stop.converged and member.last_stop is stop
    assert stop.epochs == 3 and stop.best_epoch is not None and stop.stale_checks < 50
    text = stop.describe()
    assert "stopped at max_final_epochs = 3 epochs, not converged" in text and "last improvement at epoch" in text
    assert "converged after" not in text
    engine_lines = [r.getMessage() for r in caplog.records if r.name == "fhi_al.training.engine"]
    assert text in engine_lines


def test_patience_without_improvement_is_convergence(run_dir, data):
    trainer, member = make(run_dir, data)
    # margin 1: after the first validation no decrease counts, so patience 2 ends it after 3 validations
    stop = trainer.converge(member, max_epochs=50, patience=2, margin=1.0)
    assert stop.reason is StopReason.CONVERGED and stop.converged
    assert (stop.epochs, stop.stale_checks, stop.best_epoch) == (3, 2, member.epoch - 2)
    assert stop.describe().startswith("stop_1 converged after 3 epochs: 2 validations without an improvement "
                                      "larger than 100.00% (patience 2)")
    assert stop.metrics is not None and stop.metrics["loss"] == pytest.approx(stop.best_loss)


def test_early_stopping_says_so(run_dir, data):
    trainer, member = make(run_dir, data, n_early_stopping=2)
    member.best_valid_loss, member.best_valid_epoch = 0.0, 0  # nothing can improve on a zero loss
    trainer.train(member, 10)
    stop = member.last_stop
    assert stop is not None and stop.reason is StopReason.EARLY_STOPPED
    assert member.epoch == 2 and stop.epochs == 2
    assert stop.describe() == ("stop_1 early-stopped at epoch 2 after 2 validations without a new best loss "
                               "(n_early_stopping 2); best validation loss 0 at epoch 0")
    member.best_valid_loss, member.stale_validations = math.inf, 0
    trainer.train(member, 1)
    assert member.last_stop is None  # the session ran the epochs it was given


def test_summary_repeats_the_engine_wording(caplog):
    stop = TrainingStop(tag="m_1", reason=StopReason.MAX_EPOCHS, epochs=40, final_epoch=140, best_loss=0.25,
                        best_epoch=140, stale_checks=0, patience=10, margin=0.002, limit=40)
    with caplog.at_level(logging.INFO, logger="fhi_al"):
        reporting.log_stops([stop])
    assert [r.getMessage() for r in caplog.records] == [f"Final training: {stop.describe()}."]
    assert stop.as_record()["reason"] == "max_epochs" and stop.as_record()["summary"] == stop.describe()
    no_validation = TrainingStop(tag="m_2", reason=StopReason.MAX_EPOCHS, epochs=5, final_epoch=5,
                                 best_loss=math.inf, best_epoch=None, stale_checks=0, patience=10, margin=0.0, limit=5)
    assert "no validation loss" in no_validation.describe()
