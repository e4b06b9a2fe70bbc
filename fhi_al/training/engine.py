"""The one training loop: ensemble members that keep training where they stopped (warm start) as their
data grows, for any architecture of fhi_al.architectures; checkpoints, metrics history and export.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms

from ..architectures.base import Architecture, DatasetStatistics
from ..architectures.registry import canonical_name, get_architecture_class
from ..data.stats import compute_statistics
from ..durable import append_durable
from ..errors import InputError
from ..logs import DETAIL, progress
from . import finetune, optim, session, statistics_refs, stopping
from .checkpoint import CheckpointHandler, restore_training_state, statistics_from_state
from .config import TrainingConfig
from .head import HeadedArchitecture, HeadSpec, base_architecture
from .metrics import LossTargets, error_metrics, make_loss, stress_note, with_stress
from .selection import OutlierFilter, SampleCache, force_selection, structure_key
from .stopping import StopReason, TrainingStop

log = logging.getLogger(__name__)

HISTORY_SUFFIX = "_history.jsonl"
MODEL_SUFFIX = ".model"
PROGRESS_MIN_EPOCHS = 10  # sessions at least this long show a progress bar on a terminal


@dataclass(eq=False)
class Member:
    """One ensemble member: its model and everything needed to continue training it."""

    tag: str
    seed: int
    architecture: Architecture
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any
    stats: DatasetStatistics
    rng: torch.Generator
    train_atoms: list[Atoms] = field(default_factory=list)
    valid_atoms: list[Atoms] = field(default_factory=list)
    epoch: int = 0
    best_valid_loss: float = math.inf
    optimizer_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0  # bumped whenever weights or statistics change; keys the inference copy
    stats_fingerprint: str | None = None
    stale_validations: int = 0  # validations in a row without a new best loss (early stopping)
    best_valid_epoch: int | None = None  # epoch of best_valid_loss
    last_stop: TrainingStop | None = None  # why the last session ended early or at convergence (None: ran its epochs)
    last_train_errors: dict[str, float] | None = None  # running errors of the last epoch (training weights)
    _inference: tuple[int, torch.nn.Module] | None = field(default=None, repr=False)

    def averaged(self):
        """Context in which the model holds the EMA weights (a no-op without EMA)."""
        return self.ema.average_parameters() if self.ema is not None else nullcontext()

    def averaged_model(self) -> torch.nn.Module:
        """A frozen copy of the model with the EMA weights (the architecture's own modules, e.g. for export)."""
        with self.averaged():
            frozen = copy.deepcopy(self.model)
        frozen.eval()
        for param in frozen.parameters():
            param.requires_grad_(False)
        return frozen

    def inference_model(self) -> torch.nn.Module:
        """The averaged model prepared for fast prediction (architecture hook `prepare_inference`); rebuilt
        only after the member changed."""
        if self._inference is None or self._inference[0] != self.version:
            frozen = self.averaged_model()
            prepare = getattr(self.architecture, "prepare_inference", None)
            self._inference = (self.version, prepare(frozen) if prepare is not None else frozen)
        return self._inference[1]


def member_tag(name_exp: str, seed: int) -> str:
    return f"{name_exp}_{seed}"


def make_architecture(config: TrainingConfig) -> Architecture:
    """The architecture named by `config.model`, with its hypers and the run's dtype."""
    name = canonical_name(config.model)
    cls = get_architecture_class(name)
    kwargs = {"variant": name} if name in getattr(cls, "variants", ()) else {}
    architecture = cls(config.hypers if config.hypers is not None else cls.Hypers(), dtype=config.dtype, **kwargs)
    if config.foundation_model:
        finetune.attach_foundation(architecture, config)
    return architecture


class Trainer:
    """Trains members of one architecture. All files go under `run_dir` (checkpoints, results, model)."""

    def __init__(self, config: TrainingConfig, run_dir: str | Path = "."):
        self.config = config.with_hypers()
        self.run_dir = Path(run_dir)
        self.head_spec = HeadSpec.from_config(self.config)
        architecture = make_architecture(self.config)
        self.architecture = HeadedArchitecture(architecture, self.head_spec) if self.head_spec.active else architecture
        keep_last = self.config.max_checkpoints or (None if self.config.keep_checkpoints else 1)
        self.checkpoints = CheckpointHandler(self.run_dir / self.config.checkpoints_dir, keep_last=keep_last)
        c = self.config
        c.check_stress_training(self.architecture)
        base_loss = make_loss(energy_weight=c.energy_weight, forces_weight=c.forces_weight, dtype=c.dtype,
                              criterion=c.criterion, huber_delta=c.huber_delta, energy_loss=c.energy_loss,
                              force_alpha=c.force_alpha)
        self.loss_fn = with_stress(base_loss, compute_stress=c.compute_stress, stress_weight=c.stress_weight,
                                   virials_weight=c.virials_weight)
        self.device = torch.device(self.config.device)
        # through a lambda so that the architecture's current featurize is used
        self.cache = SampleCache(lambda atoms: self.architecture.featurize(atoms), enabled=c.cache_featurization,
                                 max_entries=c.cache_max_structures)
        self.outliers = OutlierFilter(self.config)

    # --- members ---------------------------------------------------------------------------------------
    def create_member(self, tag: str, seed: int, train_atoms: Sequence[Atoms],
                      valid_atoms: Sequence[Atoms] = ()) -> Member:
        """A new member (or, with restart_latest and a checkpoint of `tag`, the checkpointed one)."""
        if self.config.restart_latest and self.checkpoints.latest_path(tag) is not None:
            return self.load_member(tag, train_atoms=train_atoms, valid_atoms=valid_atoms)
        if self.config.resume_from:
            path = self.checkpoints.resolve(self.run_dir / self.config.resume_from, tag)
            return self.load_member(tag, train_atoms=train_atoms, valid_atoms=valid_atoms, path=path)
        train_atoms = list(train_atoms)
        used = self.outliers.apply(train_atoms, label=f"{tag} training set")
        stats = self._statistics(used)
        self._resolve_hypers(stats)
        if isinstance(self.architecture, HeadedArchitecture):
            model = self.architecture.build_model(stats, seed=seed, train_atoms=used).to(self.device)
        else:
            model = self.architecture.build_model(stats, seed=seed).to(self.device)
        self.architecture.initialize_from_samples(model, self.samples(used))
        member = self._assemble(tag, seed, model, stats, train_atoms, list(valid_atoms))
        member.stats_fingerprint = self._fingerprint(used)
        log.info("member %s: %s with %d parameters, %d train / %d valid structures", tag, self.architecture.name,
                 sum(p.numel() for p in model.parameters()), len(train_atoms), len(member.valid_atoms), extra=DETAIL)
        return member

    def load_member(self, tag: str, *, train_atoms: Sequence[Atoms] | None = None,
                    valid_atoms: Sequence[Atoms] | None = None, path: Path | None = None) -> Member:
        """The member of `tag` from its latest checkpoint, or from the checkpoint file `path` (model,
        optimizer, scheduler, EMA, epoch)."""
        state = self.checkpoints.io.read(path) if path is not None else self.checkpoints.load_latest(tag)
        if state is None:
            raise InputError(f"no checkpoint for {tag!r}", where=str(self.checkpoints.io.directory))
        saved = state["architecture"]
        if saved["checkpoint_version"] != self.architecture.checkpoint_version:
            raise InputError(f"checkpoint of {tag!r} has version {saved['checkpoint_version']} of "
                             f"{saved['name']}, this code reads {self.architecture.checkpoint_version}",
                             where=str(self.checkpoints.latest_path(tag)))
        stats = statistics_from_state(state)
        self._resolve_hypers(stats)
        model = self.architecture.build_model(stats, seed=int(state["seed"])).to(self.device)
        member = self._assemble(tag, int(state["seed"]), model, stats, list(train_atoms or []),
                                list(valid_atoms or []))
        restore_training_state(member, state)
        self.architecture.update_statistics(member.model, stats)
        log.info("member %s resumed from %s at epoch %d", tag, path or self.checkpoints.latest_path(tag),
                 member.epoch, extra=DETAIL)
        return member

    def _assemble(self, tag, seed, model, stats, train_atoms, valid_atoms) -> Member:
        groups = optim.param_groups(self.architecture, model, self.config)
        optimizer = optim.build_optimizer(groups, self.config)
        return Member(tag=tag, seed=seed, architecture=self.architecture, model=model, optimizer=optimizer,
                      scheduler=optim.build_scheduler(optimizer, self.config),
                      ema=optim.build_ema(model, self.config), stats=stats,
                      rng=torch.Generator().manual_seed(seed), train_atoms=train_atoms, valid_atoms=valid_atoms)

    def reset_optimizer(self, member: Member) -> None:
        """Fresh optimizer (same parameter groups, base learning rate) and scheduler; EMA is kept."""
        groups = [{key: value for key, value in group.items() if key not in ("lr", "initial_lr")}
                  for group in member.optimizer.param_groups]
        member.optimizer = optim.build_optimizer(groups, self.config)
        member.scheduler = optim.build_scheduler(member.optimizer, self.config)

    # --- training --------------------------------------------------------------------------------------
    def train(self, member: Member, epochs: int, *, use_scheduler: bool = False,
              valid_skip: int | None = None, report: bool = True) -> dict[str, float] | None:
        """Continue training for `epochs` epochs on the member's current data; validate every `valid_skip`
        epochs (counted on the member's epoch). Returns the last validation metrics, if any. With
        report=False the session's plots/predictions are left to a later `end_session` (short AL visits)."""
        valid_skip = valid_skip or self.config.valid_skip
        self.refresh_statistics(member)
        metrics, member.last_stop = None, None
        with progress(total=epochs, desc=f"training {member.tag}", unit="epoch",
                      disable=epochs < PROGRESS_MIN_EPOCHS) as bar:
            for done in range(1, epochs + 1):
                train_loss = self._train_epoch(member, use_scheduler=use_scheduler)
                if member.epoch % valid_skip == 0:
                    metrics = self.validate(member, use_scheduler=use_scheduler, train_loss=train_loss)
                self._interval_checkpoint(member)
                bar.update()
                if self._early_stop(member, done):
                    break
        if report:
            self.end_session(member)
        return metrics

    def _early_stop(self, member: Member, epochs_done: int) -> bool:
        limit = self.config.n_early_stopping
        if limit is None or member.stale_validations < limit:
            return False
        member.last_stop = TrainingStop(tag=member.tag, reason=StopReason.EARLY_STOPPED, epochs=epochs_done,
                                        final_epoch=member.epoch, best_loss=member.best_valid_loss,
                                        best_epoch=member.best_valid_epoch, stale_checks=member.stale_validations,
                                        limit=limit, limit_key="n_early_stopping")
        log.info("%s", member.last_stop.describe(), extra=DETAIL)
        return True

    def _interval_checkpoint(self, member: Member) -> None:
        interval = self.config.checkpoint_interval
        if interval and member.epoch % interval == 0:
            self.save_checkpoint(member)

    def train_set(self, member: Member) -> list[Atoms]:
        """The member's training structures this session uses (outliers dropped)."""
        return self.outliers.apply(member.train_atoms, label=f"{member.tag} training set")

    def valid_set(self, member: Member) -> list[Atoms]:
        return self.outliers.apply(member.valid_atoms, label=f"{member.tag} validation set")

    def force_mask(self, member: Member, atoms_list: Sequence[Atoms]) -> np.ndarray | None:
        """0/1 per structure of `atoms_list`: whose forces enter the loss in the member's current epoch."""
        c = self.config
        return force_selection(atoms_list, fraction=c.force_fraction, sampling=c.force_sampling,
                               minimum=c.force_min_structures_per_epoch, seed=member.seed, epoch=member.epoch,
                               resample_epochs=c.force_resample_num_epochs)

    def _train_epoch(self, member: Member, *, use_scheduler: bool) -> float:
        atoms_list = self.train_set(member) + finetune.replay_atoms(self.architecture)
        samples = self.samples(atoms_list)
        if not samples:
            raise InputError("no training structures", where=f"member {member.tag}")
        order = torch.randperm(len(samples), generator=member.rng).tolist()
        mask = self.force_mask(member, atoms_list)
        member.model.train()
        errors = session.RunningErrors()
        batches = [order[start:start + self.config.batch_size] for start in range(0, len(order), self.config.batch_size)]
        for chosen, batch in zip(batches, session.batches(self.architecture, samples, batches, self.config.num_workers)):
            weights = self._config_weights([atoms_list[i] for i in chosen])
            force_mask = torch.as_tensor(mask[chosen]) if mask is not None else None
            errors.add(*self._step(member, batch.to(self.device), weights, force_mask, use_scheduler=use_scheduler))
        member.epoch += 1
        member.version += 1
        member.last_train_errors = errors.summary()
        if (use_scheduler and member.scheduler is not None and not optim.is_plateau(member.scheduler)
                and not optim.steps_per_batch(member.scheduler)):
            member.scheduler.step()
        return errors.mean_loss()

    def _step(self, member: Member, batch, weights: torch.Tensor | None, force_mask: torch.Tensor | None = None,
              *, use_scheduler: bool = False) -> tuple:
        member.optimizer.zero_grad(set_to_none=True)
        pred = self._predict(member.model, batch, training=True)
        targets = LossTargets.from_batch(batch).scaled(weights)
        loss = self.loss_fn(targets.with_force_mask(force_mask), pred)
        loss.backward()
        if self.config.clip_grad:
            torch.nn.utils.clip_grad_norm_(member.model.parameters(), max_norm=self.config.clip_grad)
        member.optimizer.step()
        if member.ema is not None:
            member.ema.update()
        member.optimizer_steps += 1
        if use_scheduler and optim.steps_per_batch(member.scheduler):
            member.scheduler.step()
        return float(loss.detach()), targets, {key: value.detach() for key, value in pred.items()}

    def validate(self, member: Member, *, use_scheduler: bool = False,
                 train_loss: float | None = None) -> dict[str, float] | None:
        """Metrics on the member's validation set (EMA weights), appended to results/{tag}_history.jsonl."""
        valid = self.valid_set(member)
        if not valid:
            return None
        started = time.perf_counter()
        metrics = self.evaluate(member, valid)
        if use_scheduler and optim.is_plateau(member.scheduler):
            member.scheduler.step(metrics["loss"])
        improved = metrics["loss"] < member.best_valid_loss
        member.best_valid_loss = min(member.best_valid_loss, metrics["loss"])
        member.stale_validations = 0 if improved else member.stale_validations + 1
        if improved:
            member.best_valid_epoch = member.epoch
        if improved and self.config.save_best:
            self.checkpoints.save_best(member)
        train_errors = {f"train_{k}": v for k, v in (getattr(member, "last_train_errors", None) or {}).items()}
        record = {"tag": member.tag, "epoch": member.epoch, "lr": optim.current_lr(member.optimizer),
                  "train_loss": train_loss, **metrics, **train_errors, "n_train": len(member.train_atoms),
                  "n_valid": len(member.valid_atoms), "valid_seconds": time.perf_counter() - started,
                  "time": time.time()}
        member.history.append(record)
        self._append_history(member.tag, record)
        log.info("%s epoch %d: loss %.4g, energy RMSE %.2f meV/atom, forces RMSE %.1f meV/Å%s", member.tag,
                 member.epoch, metrics["loss"], 1e3 * metrics["energy_rmse_per_atom"], 1e3 * metrics["forces_rmse"],
                 stress_note(metrics), extra=DETAIL)
        return metrics

    def evaluate(self, member: Member, atoms: Sequence[Atoms]) -> dict[str, float]:
        """Loss and errors of the member (EMA weights) on labelled `atoms`: energy_mae_per_atom,
        energy_rmse_per_atom (eV/atom), forces_mae, forces_rmse (eV/Å), loss."""
        all_targets, pred = self.predict_labelled(member, atoms)
        loss = float(self.loss_fn(all_targets, pred))
        return {"loss": loss, **error_metrics(all_targets, pred)}

    def predict_labelled(self, member: Member, atoms: Sequence[Atoms]) -> tuple[LossTargets, dict]:
        """(targets, predictions {'energy', 'forces'[, 'stress']}) of the member (EMA weights) on labelled `atoms`."""
        samples = self.samples(atoms)
        targets, outputs = [], {"energy": [], "forces": [], "stress": []}
        member.model.eval()
        with member.averaged():
            for start in range(0, len(samples), self.config.valid_batch_size):
                stop = start + self.config.valid_batch_size
                batch = self.architecture.collate(samples[start:stop]).to(self.device)
                pred = self._predict(member.model, batch, training=False)
                targets.append(LossTargets.from_batch(batch).scaled(self._config_weights(atoms[start:stop])))
                for key, value in pred.items():
                    outputs[key].append(value.detach())
        return LossTargets.concatenate(targets), {key: torch.cat(value) for key, value in outputs.items() if value}

    def _predict(self, model: torch.nn.Module, batch, *, training: bool) -> dict[str, torch.Tensor]:
        """Energy and forces of a batch, and the stress when GENERAL.compute_stress is on."""
        if self.config.compute_stress:
            return self.architecture.predict_stress(model, batch, training=training)
        return self.architecture.predict(model, batch, training=training)

    def converge(self, member: Member, max_epochs: int, patience: int, margin: float, *,
                 valid_skip: int | None = None, limit_key: str = "max_final_epochs") -> TrainingStop:
        """Train with a fresh optimizer and scheduler until the validation loss has not improved by more
        than the relative `margin` for `patience` validations, or `max_epochs` ran out; keep the best weights.
        -> why it stopped (`member.last_stop` too), with the metrics of the kept weights."""
        valid_skip = valid_skip or self.config.valid_skip
        self.reset_optimizer(member)
        self.refresh_statistics(member)
        best_loss, best_state, best_metrics, best_epoch, stale, done = math.inf, None, None, None, 0, 0
        with progress(total=max_epochs, desc=f"converging {member.tag}", unit="epoch") as bar:
            while done < max_epochs and stale < patience:
                epochs = min(valid_skip, max_epochs - done)
                for _ in range(epochs):
                    train_loss = self._train_epoch(member, use_scheduler=True)
                done += epochs
                bar.update(epochs)
                metrics = self.validate(member, use_scheduler=True, train_loss=train_loss)
                if metrics is None:
                    continue
                if best_metrics is None or metrics["loss"] < best_loss * (1.0 - margin):  # the first always counts
                    best_loss, best_metrics, best_epoch, stale = metrics["loss"], metrics, member.epoch, 0
                    best_state = stopping.snapshot(member)
                else:
                    stale += 1
        if best_state is not None:
            stopping.restore(member, best_state)
            member.best_valid_loss, member.best_valid_epoch = best_loss, best_epoch
        reason = StopReason.CONVERGED if stale >= patience else StopReason.MAX_EPOCHS
        member.last_stop = TrainingStop(tag=member.tag, reason=reason, epochs=done, final_epoch=member.epoch,
                                        best_loss=best_loss, best_epoch=best_epoch, stale_checks=stale,
                                        patience=patience, margin=margin, limit=max_epochs, limit_key=limit_key,
                                        metrics=best_metrics)
        log.info("%s", member.last_stop.describe(), extra=DETAIL)
        self.save_checkpoint(member)
        self.end_session(member)
        return member.last_stop

    def end_session(self, member: Member) -> None:
        """Predictions (write_predictions) and plots (training_plots) of the session in results/."""
        session.report(self, member)

    # --- data ------------------------------------------------------------------------------------------
    def samples(self, atoms_list: Sequence[Atoms]) -> list[Any]:
        """Featurized samples, cached per structure content (new structures are featurized once)."""
        return [self.cache.get(atoms) for atoms in atoms_list]

    def _config_weights(self, atoms_list: Sequence[Atoms]) -> torch.Tensor | None:
        """Loss weight of each structure from TRAINING.config_type_weights (None when all weights are 1)."""
        table = self.config.config_type_weights
        if not table or all(value == 1.0 for value in table.values()):
            return None
        return torch.tensor([table.get(a.info.get("config_type", "Default"), 1.0) for a in atoms_list],
                            dtype=self.config.dtype, device=self.device)

    def refresh_statistics(self, member: Member) -> bool:
        """Recompute E0s, neighbour counts and scales when the training set changed since the last time."""
        used = self.train_set(member)
        fingerprint = self._fingerprint(used)
        if fingerprint == member.stats_fingerprint:
            return False
        member.stats = self._statistics(used)
        self._resolve_hypers(member.stats)
        if isinstance(self.architecture, HeadedArchitecture):
            self.architecture.refresh(member.model, member.stats, used)
        else:
            self.architecture.update_statistics(member.model, member.stats)
        member.stats_fingerprint = fingerprint
        member.version += 1
        return True

    def _resolve_hypers(self, stats: DatasetStatistics) -> None:
        """Hyperparameters given as ${training_data_stats:NAME} take the values of `stats`."""
        if self.config.hypers_statistics:
            inner = base_architecture(self.architecture)
            inner.hypers = statistics_refs.resolve_hypers(self.config.hypers, self.config.hypers_statistics, stats)

    def _statistics(self, train_atoms: Sequence[Atoms]) -> DatasetStatistics:
        return compute_statistics(train_atoms, cutoff_A=self.architecture.cutoff_A,
                                  atomic_energies=self.config.atomic_energies)

    @staticmethod
    def _fingerprint(atoms_list: Sequence[Atoms]) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for atoms in atoms_list:
            digest.update(structure_key(atoms).encode())
        return digest.hexdigest()

    # --- files -----------------------------------------------------------------------------------------
    def save_checkpoint(self, member: Member) -> Path:
        return self.checkpoints.save(member)

    def export(self, member: Member, path: str | Path | None = None) -> Path:
        """The member with EMA weights as `model/{tag}.model` (loadable by mace's MACECalculator for MACE)."""
        path = Path(path) if path is not None else self.model_path(member.tag)
        self.architecture.export(member.averaged_model(), path)
        log.info("exported %s to %s", member.tag, path, extra=DETAIL)
        if self.config.export_lammps:
            finetune.export_lammps(self.architecture, path)
        return path

    def model_path(self, tag: str) -> Path:
        return self.run_dir / self.config.model_dir / f"{tag}{MODEL_SUFFIX}"

    def history_path(self, tag: str) -> Path:
        return self.run_dir / self.config.results_dir / f"{tag}{HISTORY_SUFFIX}"

    def _append_history(self, tag: str, record: dict[str, Any]) -> None:
        append_durable(self.history_path(tag), json.dumps(record) + "\n")
