"""Checkpoints in three small layers: what a member's state is (state), where its files go (IO) and the
facade the engine calls (handler). Files are written atomically; older ones are pruned unless kept.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..architectures.base import DatasetStatistics
from ..durable import atomic_torch_save
from ..errors import InputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUFFIX = ".pt"
BEST_SUFFIX = "_best.pt"  # the member at its lowest validation loss (save_best)
_EPOCH = re.compile(r"_epoch-(\d+)\.pt$")


# --- state: what is saved -------------------------------------------------------------------------------
def member_state(member: Any) -> dict[str, Any]:
    """Everything needed to continue training `member` exactly where it stopped."""
    arch = member.architecture
    return {
        "format_version": FORMAT_VERSION,
        "tag": member.tag, "seed": member.seed, "epoch": member.epoch,
        "best_valid_loss": member.best_valid_loss, "optimizer_steps": member.optimizer_steps,
        "architecture": {"name": arch.name, "variant": getattr(arch, "variant", arch.name),
                         "checkpoint_version": arch.checkpoint_version, "hypers": dict(arch.hypers_dict()),
                         "dtype": str(arch.dtype).replace("torch.", "")},
        "statistics": dataclasses.asdict(member.stats),
        "model": member.model.state_dict(),
        "optimizer": member.optimizer.state_dict(),
        "scheduler": member.scheduler.state_dict() if member.scheduler is not None else None,
        "ema": member.ema.state_dict() if member.ema is not None else None,
        "shuffle_rng": member.rng.get_state(),
        "stale_validations": member.stale_validations,
        "best_valid_epoch": member.best_valid_epoch,
    }


def restore_training_state(member: Any, state: dict[str, Any]) -> None:
    """Load optimizer, scheduler, EMA, counters and RNG of `state` into a member whose model is built."""
    member.model.load_state_dict(state["model"])
    member.optimizer.load_state_dict(state["optimizer"])
    if member.scheduler is not None and state.get("scheduler") is not None:
        member.scheduler.load_state_dict(state["scheduler"])
    if member.ema is not None and state.get("ema") is not None:
        member.ema.load_state_dict(state["ema"])
    member.rng.set_state(state["shuffle_rng"])
    member.epoch = int(state["epoch"])
    member.best_valid_loss = float(state["best_valid_loss"])
    member.optimizer_steps = int(state.get("optimizer_steps", 0))
    member.stale_validations = int(state.get("stale_validations", 0))
    member.best_valid_epoch = state.get("best_valid_epoch")


WEIGHT_KEYS = ("tag", "epoch", "best_valid_loss", "best_valid_epoch", "statistics", "model", "ema")


def weights_state(member: Any) -> dict[str, Any]:
    """What another process needs to predict with `member` (weights, EMA, statistics), without the optimizer."""
    state = member_state(member)
    return {key: _detached(state[key]) for key in WEIGHT_KEYS}


def _detached(value: Any) -> Any:
    """`value` with every tensor replaced by a detached copy (a message must not share or track the live weights)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(item) for item in value)
    return value


def adopt_weights(member: Any, state: dict[str, Any]) -> None:
    """Load `weights_state` of the same member trained elsewhere into this copy (its predictions change)."""
    member.stats = statistics_from_state(state)
    member.model.load_state_dict(state["model"])
    if member.ema is not None and state.get("ema") is not None:
        member.ema.load_state_dict(state["ema"])
    member.architecture.update_statistics(member.model, member.stats)
    member.epoch = int(state["epoch"])
    member.best_valid_loss = float(state["best_valid_loss"])
    member.best_valid_epoch = state.get("best_valid_epoch")
    member.version += 1


def statistics_from_state(state: dict[str, Any]) -> DatasetStatistics:
    raw = dict(state["statistics"])
    raw["atomic_energies_eV"] = {int(z): float(e) for z, e in raw["atomic_energies_eV"].items()}
    for name in ("per_type_forces_rms", "per_type_energy_shifts"):
        raw[name] = {int(z): float(e) for z, e in raw.get(name, {}).items()}
    return DatasetStatistics(**raw)


# --- IO: where files go ---------------------------------------------------------------------------------
class CheckpointIO:
    """Files `{directory}/{tag}_epoch-{epoch}.pt`, the naming of mace_run_train."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, tag: str, epoch: int) -> Path:
        return self.directory / f"{tag}_epoch-{epoch}{SUFFIX}"

    def best_path(self, tag: str) -> Path:
        return self.directory / f"{tag}{BEST_SUFFIX}"

    def paths(self, tag: str) -> list[Path]:
        """Checkpoints of `tag`, oldest epoch first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.glob(f"{glob_escape(tag)}_epoch-*{SUFFIX}"):
            match = _EPOCH.search(path.name)
            if match and path.name[:match.start()] == tag:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def write(self, state: dict[str, Any], path: Path) -> None:
        atomic_torch_save(state, path)

    def read(self, path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=False)


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


# --- handler: the facade --------------------------------------------------------------------------------
class CheckpointHandler:
    """save(member) writes the newest checkpoint and keeps the `keep_last` newest of that tag (None = all)."""

    def __init__(self, directory: str | Path, *, keep_last: int | None = 1):
        self.io = CheckpointIO(directory)
        self.keep_last = keep_last

    def save(self, member: Any) -> Path:
        path = self.io.path(member.tag, member.epoch)
        self.io.write(member_state(member), path)
        if self.keep_last is not None:
            for old in self.io.paths(member.tag)[:-self.keep_last]:
                if old != path:
                    old.unlink(missing_ok=True)
        log.debug("checkpoint %s", path)
        return path

    def save_best(self, member: Any) -> Path:
        path = self.io.best_path(member.tag)
        self.io.write(member_state(member), path)
        log.debug("best checkpoint %s (validation loss %.4g)", path, member.best_valid_loss)
        return path

    def resolve(self, location: Path, tag: str) -> Path:
        """A checkpoint file, or the latest checkpoint of `tag` in the folder `location` (resume_from)."""
        if location.is_dir():
            paths = CheckpointIO(location).paths(tag)
            if not paths:
                raise InputError(f"no checkpoint of {tag!r} in this folder", where=str(location))
            return paths[-1]
        if not location.is_file():
            raise InputError("no such checkpoint file or folder", where=str(location))
        return location

    def latest_path(self, tag: str) -> Path | None:
        paths = self.io.paths(tag)
        return paths[-1] if paths else None

    def load_latest(self, tag: str) -> dict[str, Any] | None:
        path = self.latest_path(tag)
        return self.io.read(path) if path is not None else None
