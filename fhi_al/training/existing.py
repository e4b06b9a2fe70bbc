"""Members from models the user already has (model/<tag>.model, written by fhi_al or mace_run_train): built with
the run's settings, then given the file's weights; a file whose architecture differs is an InputError.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from ase import Atoms

from ..errors import InputError
from . import optim
from .engine import Member, Trainer

log = logging.getLogger(__name__)

SHOWN_DIFFERENCES = 3


def read_model_file(path: Path) -> torch.nn.Module:
    import mace  # noqa: F401 - mace's modules must be importable to unpickle a MACE model

    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - unpickling fails in many ways
        raise InputError(f"cannot load the model ({type(error).__name__}: {error})", where=str(path)) from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"holds a {type(model).__name__}, not a model", where=str(path))
    return model


def architecture_differences(own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> list[str]:
    """Parameters and buffers that are missing on either side or differ in shape (empty: the same architecture)."""
    differences = [f"{name} only in the settings' model" for name in sorted(set(own) - set(theirs))]
    differences += [f"{name} only in the file" for name in sorted(set(theirs) - set(own))]
    differences += [f"{name}: shape {tuple(theirs[name].shape)} in the file, {tuple(own[name].shape)} from the settings"
                    for name in sorted(set(own) & set(theirs)) if own[name].shape != theirs[name].shape]
    return differences


def member_from_model_file(trainer: Trainer, tag: str, seed: int, path: Path, train_atoms: Sequence[Atoms],
                           valid_atoms: Sequence[Atoms]) -> Member:
    """The member `tag` with the weights of `path` (a fresh optimiser; the EMA starts from those weights). The
    statistics terms (E0s, scale and shift) are the run's data's, as for every member (`update_statistics`), so
    the member is the same when its checkpoint is read back."""
    saved = read_model_file(path)
    member = trainer.create_member(tag, seed, train_atoms, valid_atoms)
    own, theirs = member.model.state_dict(), saved.state_dict()
    differences = architecture_differences(own, theirs)
    if differences:
        shown = "; ".join(differences[:SHOWN_DIFFERENCES])
        raise InputError(f"the model's architecture differs from ARCHITECTURE in mace_settings.yaml ({shown}"
                         f"{'; ...' if len(differences) > SHOWN_DIFFERENCES else ''}); set the model's "
                         f"hyperparameters or remove the file to train a new member", where=str(path))
    with torch.no_grad():
        member.model.load_state_dict({name: value.to(own[name].dtype) for name, value in theirs.items()})
    trainer.architecture.update_statistics(member.model, member.stats)
    member.ema = optim.build_ema(member.model, trainer.config)
    member.version += 1
    log.info("member %s: weights from %s", tag, path)
    return member
