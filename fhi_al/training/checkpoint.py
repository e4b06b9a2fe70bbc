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

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUFFIX = ".pt"
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
    """save(member) writes the newest checkpoint and, unless `keep`, removes the older ones of that tag."""

    def __init__(self, directory: str | Path, *, keep: bool = False):
        self.io = CheckpointIO(directory)
        self.keep = keep

    def save(self, member: Any) -> Path:
        path = self.io.path(member.tag, member.epoch)
        self.io.write(member_state(member), path)
        if not self.keep:
            for old in self.io.paths(member.tag):
                if old != path:
                    old.unlink(missing_ok=True)
        log.debug("checkpoint %s", path)
        return path

    def latest_path(self, tag: str) -> Path | None:
        paths = self.io.paths(tag)
        return paths[-1] if paths else None

    def load_latest(self, tag: str) -> dict[str, Any] | None:
        path = self.latest_path(tag)
        return self.io.read(path) if path is not None else None
