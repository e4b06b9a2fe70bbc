"""Active learning: MLFF trajectories on the ensemble mean; a frame whose force uncertainty crosses the
threshold goes to the reference, the label joins the datasets, and the ensemble trains with warm start
(intermediate_epochs per visit, max_epochs_worker per label) while the other trajectories keep their turn.
With ACTIVE_LEARNING.ml_ranks > 1 the members train concurrently on their own ranks (al_training, member_ranks).

Several systems: trajectory i starts from system i mod n_systems (in the order of MISC.path_to_geometry),
so num_trajectories >= n_systems runs every system; its frames and labels carry the system's name
(atoms.info["system"]). Each system has its own uncertainty threshold unless threshold_per_system is false.
The validation force MAE per system is recorded at the start, after each label's training and at the end
(results/per_system_metrics.json, learning_curve_per_system.png); the stopping criteria use the global metric.

Restart: the record (trajectories, threshold, counters, RNG streams) is rewritten after every label,
training visit and MD visit; labels are appended durably first, so none is lost or stored twice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..data.splits import VALID, al_destination
from ..data.store import make_label_id
from ..errors import InputError, ReferenceError
from ..labeling import LabelResult
from ..logs import DETAIL
from ..md import FrameBounds, MDParameters
from ..parallel import wait_until
from ..references import compute_label, reference_timeout_from_settings
from ..references.ledger import ANALYSIS, ReferenceCost, ledger_path
from ..restart import is_done, mark_done
from ..systems import describe, system_of
from ..md.bias import width_from_spread
from ..md.bias import model_results
from . import al_reporting, exploration, reporting, system_metrics
from .al_calibration import CALIBRATION_FILE, AlCalibration, energy_spread_per_sqrt_atom
from .al_thresholds import make_thresholds
from .al_training import EnsembleTraining
from .common import (AL_STAGE, AL_TRAIN, AL_VALID, INITIAL_STAGE, TRAIN, al_member_data, dataset_name,
                     ensemble_forces_mae, load_or_create_member, make_store, make_trainer, member_specs)
from .member_ranks import ml_rank_device
from .label_book import LabelBook, Timings
from .state import ActiveLearningState, PendingLabel, StateFile
from .trajectories import FINISHED, RUNNING, TRAINING, WAITING, Trajectory, make_trajectories

log = logging.getLogger(__name__)

# A trajectory that blows up this many times in a row from the same frame lacks data there: that frame is
# labelled, so the ensemble learns the region instead of the trajectory looping until max_MD_steps.
RESETS_BEFORE_LABEL = 3
RECORD_PATH = Path("restart") / "al" / "state.json"


def run(context: Any) -> None:
    ActiveLearning(context).run()


class ActiveLearning:
    def __init__(self, context: Any):
        self.context = context
        self.run_dir = Path(context.run_dir)
        self.settings = context.settings
        self.al = context.settings.al.active_learning
        self.bounds = FrameBounds.from_settings(self.al)
        self.specs = member_specs(name_exp=context.settings.mace.general.name_exp,
                                  seed=context.settings.mace.general.seed, ensemble_size=self.al.ensemble_size)
        self.store = make_store(context.settings, self.run_dir)
        self.state_file = StateFile(self.run_dir / RECORD_PATH, ActiveLearningState,
                                    enabled=self.settings.al.misc.create_restart)
        self.analysis_dir = self.run_dir / "analysis"
        self.timings = Timings()
        self.started = time.perf_counter()
        self.stops: list[Any] = []  # fhi_al.training.stopping.TrainingStop of the final convergence
        self.exchanges: exploration.Exchanges | None = None
        self.biases: dict[int, exploration.TrajectoryBias] = {}

    # ------------------------------------------------------------------------------------------ steps
    def run(self) -> None:
        if is_done(self.run_dir, AL_STAGE.marker):
            log.info("Active learning is complete already (%s); nothing to do.", self.run_dir / "done")
            return
        self.require_initial_dataset()
        self.start_or_resume()
        with self.progress_bar() as self.bar:
            while not self.should_stop():
                self.visit_trajectories()
        self.book.drain(self.receive_label, on_cancel=self.cancelled)
        self.stops = self.training.finish()
        self.export_models()
        self.write_final_datasets()
        self.report()
        mark_done(self.run_dir, AL_STAGE.marker,
                  {"labels": self.state.labels, "valid_forces_mae": self.ensemble_mae(),
                   "final_training": [stop.as_record() for stop in self.stops]})

    def require_initial_dataset(self) -> None:
        if not is_done(self.run_dir, INITIAL_STAGE.marker) and self.al.initial_train_dataset is not None:
            from .given_start import run as start_from_given

            start_from_given(self.context)  # FHI_AL-al alone: the given datasets (and models) are the start
        if not is_done(self.run_dir, INITIAL_STAGE.marker):
            raise InputError("the initial dataset is not complete in this folder: run FHI_AL-initial-ds (or FHI_AL) "
                             "first", where=str(self.run_dir))

    def start_or_resume(self) -> None:
        self.reference = self.context.services.reference
        self.labeler = self.context.services.labeler
        self.timeout_s = reference_timeout_from_settings(self.settings)
        self.trainer = make_trainer(self.settings, self.run_dir, device=ml_rank_device(self.settings))
        self.members = {spec.tag: load_or_create_member(self.trainer, spec, *al_member_data(self.store, spec.tag))
                        for spec in self.specs}
        self.calc = self.make_calculator()
        self.systems = list(self.context.systems)
        count = self.al.num_trajectories
        mds = [MDParameters.from_settings(self.settings.al.md_settings_for(index)) for index in range(count)]
        self.trajectories = make_trajectories(trajectory_starts(self.systems, count), self.calc, mds=mds,
                                              seed=self.settings.al.md.seed, bounds=self.bounds)
        if len(self.systems) > 1:
            log.info("%d systems (%s); trajectory i starts from system i mod %d.", len(self.systems),
                     describe(self.systems), len(self.systems))
        self.state = self.state_file.load()
        self.training = EnsembleTraining(self.trainer, self.members, self.state, self.al,
                                         comm=self.context.services.comm, timings=self.timings)
        self.thresholds = make_thresholds(self.al, self.systems, self.state.threshold, record=RECORD_PATH)
        if self.state.trajectories is not None:
            for trajectory, saved_state in zip(self.trajectories, self.state.trajectories):
                trajectory.restore(saved_state)
            log.info("Resuming active learning: %d labels so far, MD steps %s.", self.state.labels,
                     [t.step for t in self.trajectories])
        self.biases = exploration.attach_biases(self.trajectories, self.settings.al, self.run_dir)
        self.exchanges = exploration.make_exchanges(self.trajectories, self.settings.al, self.systems,
                                                    self.state.exploration.get("exchange"),
                                                    seed=self.settings.al.md.seed + 1)
        self.calibration = AlCalibration(self.run_dir / self.trainer.config.results_dir, self.systems,
                                         self.state.exploration.get("calibration"))
        self.book = LabelBook(self.store, self.labeler, pending=self.state.pending, stage=AL_STAGE.prefix,
                              template=lambda label: self.trajectories[label.trajectory].atoms, save=self.save_state,
                              timings=self.timings, bounds=self.bounds, ledger=ledger_path(self.run_dir))
        if not self.state.metrics:
            self.state.metrics = {tag: self.trainer.evaluate(m, m.valid_atoms) for tag, m in self.members.items()}
            log.info("Starting active learning: ensemble validation force MAE %.4f eV/Å.", self.ensemble_mae())
            self.report_systems(plot=False, labels=self.state.labels)
        self.recalibrate()
        self.resubmit_pending()

    def should_stop(self) -> bool:
        if all(t.status == FINISHED for t in self.trajectories):
            log.info("Every trajectory reached max_MD_steps = %d.", self.al.max_MD_steps)
            return True
        largest = max(len(m.train_atoms) for m in self.members.values())
        if largest >= self.al.max_set_size:
            log.info("Training set holds %d structures >= max_set_size = %d.", largest, self.al.max_set_size)
            return True
        mae = self.ensemble_mae()
        if self.al.desired_acc > 0 and mae <= self.al.desired_acc:
            log.info("Ensemble validation force MAE %.4f eV/Å <= desired_acc = %.4f eV/Å.", mae, self.al.desired_acc)
            return True
        return False

    def visit_trajectories(self) -> None:
        """One turn for every trajectory, so that one trajectory's training never stalls the others."""
        for result in self.labeler.collect():
            self.receive_label(result)
        self.training.collect()
        for trajectory in self.trajectories:
            if trajectory.status == RUNNING:
                self.propagate(trajectory)
            elif trajectory.status == TRAINING:
                self.train_visit(trajectory)
            self.save_state()
        if self.exchanges is not None and exploration.exchange_if_due(self.exchanges, self.trajectories):
            self.save_state()
        for result in self.wait_for_news() if self.idle() else self.labeler.collect():
            self.receive_label(result)

    def idle(self) -> bool:
        """Nothing for rank 0 to do: every trajectory waits for a label, for other ranks' training, or is done."""
        return all(t.status in (WAITING, FINISHED) or (t.status == TRAINING and t.epochs_left <= 0)
                   for t in self.trajectories)

    def wait_for_news(self) -> list[LabelResult]:
        """Wait (without spinning) for a label or for weights from a training rank -> the labels (the labeler's
        own wait, which also counts the waiting time, knows nothing of the training ranks)."""
        results: list[LabelResult] = []

        def news() -> bool:
            results.extend(self.labeler.collect())
            trained = self.training.collect()
            return bool(results or trained or not (self.labeler.in_flight or self.training.outstanding))

        started = time.perf_counter()
        wait_until(news)
        self.labeler.waited_s += time.perf_counter() - started  # the ML rank's idle time (busy fraction)
        return results

    # ------------------------------------------------------------------------------------------ MD
    def propagate(self, trajectory: Trajectory) -> None:
        steps = min(self.al.skip_step_mlff, self.al.max_MD_steps - trajectory.step)
        before = trajectory.step
        with self.timings.measure("md_s"):
            reason = trajectory.advance(steps)
        self.bar.update(max(trajectory.step - before, 0))
        if reason is None:
            self.check_uncertainty(trajectory)
        elif trajectory.resets_in_a_row >= RESETS_BEFORE_LABEL:
            self.request_label(trajectory, trajectory.last_good_frame(), kind="blow-up")
        if trajectory.status == RUNNING and trajectory.step >= self.al.max_MD_steps:
            trajectory.status = FINISHED
            log.info("trajectory %d reached max_MD_steps = %d.", trajectory.index, self.al.max_MD_steps)

    def check_uncertainty(self, trajectory: Trajectory) -> None:
        check = trajectory.check(self.al.uncertainty_reduction)
        analysis = self.al.analysis and self.analysis_due(trajectory, check.md_step)
        predicted = model_results(trajectory.atoms.calc.results)[1].copy() if analysis else None
        if trajectory.spaced_from_last_label(self.al.label_spacing_steps):
            self.decide(trajectory, check)
        # after the decision: a frame that is also labelled is computed (and paid) as the label, and the
        # analysis point reads the reference's cached results
        if analysis:
            self.analysis_point(trajectory, check, predicted)

    def decide(self, trajectory: Trajectory, check: Any) -> None:
        system = system_of(trajectory.atoms, self.systems)
        calibrated = self.calibration.calibrated(check.uncertainty_eV_per_A, system)
        value = calibrated if self.al.threshold_mode == "absolute" else check.uncertainty_eV_per_A
        decision = self.thresholds.check(value, trajectory=trajectory.index, system=system)
        al_reporting.append_check(self.analysis_dir, trajectory.index, check, decision,
                                  extra={"uncertainty_calibrated_eV_per_A": calibrated,
                                         "threshold_mode": self.al.threshold_mode,
                                         **exploration.bias_record(trajectory)})
        if decision.discard:
            bound = "upper_threshold_eV_per_A" if self.al.threshold_mode == "absolute" else "uncertainty_upper_bound"
            trajectory.reset(f"uncertainty {decision.value:.3f} eV/Å above {bound}")
        elif decision.label:
            log.info("trajectory %d step %d: uncertainty %.3f eV/Å (expected force error %.3f eV/Å), threshold %s "
                     "-> reference (%s)", trajectory.index, check.md_step, check.uncertainty_eV_per_A, calibrated,
                     _fmt(decision.threshold), decision.kind, extra=DETAIL)
            self.request_label(trajectory, check.frame, kind=decision.kind)

    def request_label(self, trajectory: Trajectory, frame: Any, *, kind: str) -> None:
        """Send `frame` to the reference; the trajectory waits for it (the request is on disk first)."""
        label = PendingLabel(make_label_id(AL_STAGE.prefix, trajectory.index, trajectory.step), trajectory.step,
                             frame.get_positions(), trajectory=trajectory.index, kind=kind,
                             cell=frame.get_cell().array.copy())
        trajectory.status = WAITING
        trajectory.last_label_step = trajectory.step
        if kind == "blow-up":
            log.info("trajectory %d: %d resets in a row; its last good frame goes to the reference", trajectory.index,
                     trajectory.resets_in_a_row, extra=DETAIL)
            trajectory.resets_in_a_row = 0
            al_reporting.append_blow_up_label(self.analysis_dir, trajectory.index, trajectory.step)
        self.book.request(label)

    def analysis_due(self, trajectory: Trajectory, md_step: int) -> bool:
        previous = md_step - self.al.skip_step_mlff
        return md_step // self.al.analysis_skip > max(previous, 0) // self.al.analysis_skip or md_step == 0

    def analysis_point(self, trajectory: Trajectory, check: Any, predicted: Any) -> None:
        """True force error of the ensemble mean at this frame, with its uncertainty; never added to the data."""
        try:
            with self.timings.measure("reference_s"):
                _, forces = compute_label(self.reference, check.frame, timeout_s=self.timeout_s,
                                          label_id=make_label_id("analysis", trajectory.index, check.md_step),
                                          ledger=ledger_path(self.run_dir), purpose=ANALYSIS)
        except ReferenceError as error:
            log.warning("analysis point skipped: %s", error)
            return
        calibrated = self.calibration.calibrated(check.uncertainty_eV_per_A, system_of(check.frame, self.systems))
        al_reporting.append_analysis(self.analysis_dir, trajectory.index, check, predicted, forces,
                                     calibrated_eV_per_A=calibrated)

    # ------------------------------------------------------------------------------------------ labels
    def receive_label(self, result: LabelResult) -> None:
        label = self.book.take(result)
        trajectory = self.trajectories[label.trajectory]
        if not result.ok:
            log.warning("trajectory %d: reference failed on %s, frame skipped: %s", trajectory.index,
                        result.label_id, result.error)
            trajectory.status = RUNNING
            self.save_state()
            return
        if (reason := self.book.rejection(result)) is not None:
            trajectory.dynamics.step_back(reason)  # the labelled frame was its last good one
            trajectory.status = RUNNING
            self.save_state()
            return
        labelled, valid = self.store_label(result, label)
        trajectory.status = TRAINING
        trajectory.epochs_left, trajectory.remote_until = self.training.add_label(labelled, valid=valid)
        trajectory.labels += 1
        self.state.labels += 1
        self.save_state()

    def cancelled(self, label: PendingLabel) -> None:
        """A frame dropped at the end before it reached the reference: its trajectory stops waiting."""
        self.trajectories[label.trajectory].status = RUNNING

    def store_label(self, result: LabelResult, label: PendingLabel) -> tuple[Any, bool]:
        """Append the label to the AL train or valid set and to every member's -> (frame, to validation);
        the frame is None when it was stored before a kill."""
        n_train, n_valid = self.store.count(AL_TRAIN), self.store.count(AL_VALID)
        destination = al_destination(n_train_al=n_train, n_valid_al=n_valid, valid_ratio=self.al.valid_ratio)
        labelled = self.book.store_label(result, label, AL_VALID if destination == VALID else AL_TRAIN)
        if labelled is None:  # stored before a kill
            return None, destination == VALID
        for member in self.members.values():
            (member.valid_atoms if destination == VALID else member.train_atoms).append(labelled)
        log.info("label %s%s stored in %s (%d AL labels: %d train, %d valid).", result.label_id,
                 f" ({label.kind})" if label.kind else "", destination, n_train + n_valid + 1,
                 n_train + (destination != VALID), n_valid + (destination == VALID))
        return labelled, destination == VALID

    def resubmit_pending(self) -> None:
        """Frames that were waiting for the reference when the run stopped: stored already, or asked again."""
        for label in self.book.resubmit():  # stored just before the kill: its trajectory trains next
            self.book.pending.pop(label.label_id)
            trajectory = self.trajectories[label.trajectory]
            trajectory.status = TRAINING
            trajectory.epochs_left, trajectory.remote_until = self.training.add_label(None, valid=False)
        waiting = {label.trajectory for label in self.book.pending.values()}
        for trajectory in self.trajectories:
            if trajectory.status == WAITING and trajectory.index not in waiting:
                log.warning("trajectory %d was waiting for a label that the restart record does not hold; "
                            "it runs on", trajectory.index)
                trajectory.status = RUNNING

    # ------------------------------------------------------------------------------------------ training
    def train_visit(self, trajectory: Trajectory) -> None:
        """Rank 0's members train one visit of the trajectory's label; it resumes once every member is done."""
        epochs = min(self.al.intermediate_epochs, trajectory.epochs_left)
        if epochs > 0:
            self.training.visit(epochs)
            trajectory.epochs_left -= epochs
        if not self.training.trained(trajectory.epochs_left, trajectory.remote_until):
            return
        trajectory.status = RUNNING if trajectory.step < self.al.max_MD_steps else FINISHED
        self.report_systems(plot=False, console=False, labels=self.state.labels)  # learning curve per system
        self.recalibrate()
        self.bar.set_postfix(labels=self.state.labels, mae_meV_A=f"{1e3 * self.ensemble_mae():.0f}",
                             threshold=_fmt(self.thresholds.tracker(system_of(trajectory.atoms,
                                                                              self.systems)).threshold))

    # ------------------------------------------------------------------------------------------ outputs
    def export_models(self) -> None:
        for member in self.members.values():
            self.trainer.end_session(member)  # plots and predictions of the final models
            self.trainer.export(member)

    def write_final_datasets(self) -> None:
        for tag, member in self.members.items():
            self.store.write(dataset_name("final", TRAIN, tag), member.train_atoms)
            self.store.write(dataset_name("final", VALID, tag), member.valid_atoms)

    def report(self) -> None:
        results = self.run_dir / self.trainer.config.results_dir
        reporting.learning_curve({tag: reporting.read_history(self.trainer.history_path(tag)) for tag in self.members},
                                 results / "al_learning_curve.png", title="Active learning")
        al_reporting.uncertainty_traces(self.analysis_dir, results / "uncertainty_trace.png")
        reporting.reference_usage(self.labeler, results, name="al")
        al_reporting.labels_per_trajectory(self.analysis_dir, results / "labels_per_trajectory.png")
        if self.al.analysis:
            al_reporting.calibration(self.analysis_dir, self.analysis_dir / "calibration.png")
        wall_s = time.perf_counter() - self.started
        timings = self.timings.as_dict()
        timings["other_s"] = max(wall_s - sum(timings.values()), 0.0)
        log.info("Active learning finished: %d labels, ensemble validation force MAE %.4f eV/Å, wall time %.0f s "
                 "(%s).", self.state.labels, self.ensemble_mae(), wall_s, reporting.timing_table(timings))
        log.info("Whole run so far: %s.", ReferenceCost.from_ledger(ledger_path(self.run_dir)).summary())
        reporting.log_rejections(reporting.md_rejections([t.dynamics for t in self.trajectories]), self.book.rejected)
        self.report_systems(plot=True, labels=self.state.labels)
        system_metrics.learning_curve_plot(results / system_metrics.METRICS_FILE, results / system_metrics.CURVE_FILE)
        exploration.write_exchange_report(self.exchanges, results)
        if self.recalibrate(plot=True):
            log.info("Calibrated uncertainty (results/%s): %s.", CALIBRATION_FILE, self.calibration.summary())
        reporting.log_stops(self.stops)
        reporting.log_outputs([self.trainer.model_path(tag) for tag in self.members], results, self.run_dir)

    # ------------------------------------------------------------------------------------------ helpers
    def make_calculator(self):
        from ..ensemble import EnsembleCalculator

        return EnsembleCalculator(list(self.members.values()))

    def report_systems(self, *, plot: bool, console: bool = True, **context: Any) -> None:
        """Validation force MAE of each system (results/per_system_metrics.json; several: log, parity plot)."""
        member = next(iter(self.members.values()))
        system_metrics.report(self.trainer, list(self.members.values()), member.valid_atoms, self.systems,
                              results_dir=self.run_dir / self.trainer.config.results_dir, stage="al", plot=plot,
                              ledger=ledger_path(self.run_dir), console=console, **context)

    def recalibrate(self, *, plot: bool = False) -> bool:
        """Refit the calibration on the validation frames (and the uncertainty bias width where it is not
        given); False when there is no validation frame yet."""
        valid = next(iter(self.members.values())).valid_atoms
        with self.timings.measure("calibration_s"):
            fits = self.calibration.refit(self.calc, valid, labels=self.state.labels, plot=plot)
            if valid and any(not bias.width_fixed and bias.uncertainty is not None for bias in self.biases.values()):
                width_eV = width_from_spread(energy_spread_per_sqrt_atom(self.calc, valid))
                exploration.refresh_widths(self.biases, width_eV)
        return bool(fits)

    def ensemble_mae(self) -> float:
        return ensemble_forces_mae([self.state.metrics.get(spec.tag) for spec in self.specs])

    def progress_bar(self):
        total = self.al.num_trajectories * self.al.max_MD_steps
        done = sum(t.step for t in self.trajectories)
        return tqdm(total=total, initial=done, desc="active learning MD", unit="step", disable=None)

    def save_state(self) -> None:
        if not self.state_file.enabled:
            return
        self.state.threshold = self.thresholds.state_dict()
        self.state.trajectories = [t.state() for t in self.trajectories]
        if self.exchanges is not None:
            self.state.exploration["exchange"] = self.exchanges.state_dict()
        self.state.exploration["calibration"] = self.calibration.state_dict()
        self.state_file.save(self.state)


def trajectory_starts(systems: list, count: int) -> list:
    """The starting structure of each of `count` trajectories: trajectory i starts from system i mod n."""
    return [systems[index % len(systems)].atoms for index in range(count)]


def _fmt(value: float | None) -> str:
    return "warm-up" if value is None else f"{value:.3f}"
