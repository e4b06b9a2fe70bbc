"""Fine-tuning a MACE foundation model (ARCHITECTURE.foundation_model): loading it (a .model file, or MACE-MP
by name through mace's own loader), taking its hyperparameters, and building members from its weights.

Members are built the way mace_run_train fine-tunes: a ScaleShiftMACE with the foundation's configuration
restricted to the run's elements, filled by mace's `load_foundations_elements`; the readouts are not loaded,
so each member's readout is initialised from its own seed. Freezing is mace's `--freeze` (get_params_options).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import torch

from ...errors import InputError
from .hypers import MaceHypers

log = logging.getLogger(__name__)

FOUNDATION_KEY = "ARCHITECTURE.foundation_model"
MACE_MP_NAMES = ("small", "medium", "large")
FOUNDATION_CLASSES = ("ScaleShiftMACE",)  # what mace's extract_config_mace_model reads
NAIVE, MULTIHEAD = "naive", "multihead"
FINETUNING_CHOICES = (NAIVE, MULTIHEAD)
DEFAULT_HEAD, REPLAY_HEAD = "Default", "pt_head"  # mace's head names
# mace's --freeze thresholds (mace.tools.scripts_utils.get_params_options): layers frozen from 1 to N
FREEZE_LR_FACTORS = {"embedding_lr_factor": 1.0, "interactions_lr_factor": 1.0, "products_lr_factor": 1.0,
                     "readouts_lr_factor": 1.0}
ADAM_BETA1 = 0.9

_LOADED: dict[tuple[str, str], torch.nn.Module] = {}


def is_mace_mp_name(spec: str) -> bool:
    return str(spec).lower() in MACE_MP_NAMES


def load_foundation(spec: str, *, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """The foundation model of `spec` (a MACE-MP size or the path of a .model file), in `dtype`, single-head.

    InputError naming ARCHITECTURE.foundation_model if it cannot be loaded or is not a MACE model."""
    key = (str(spec), str(dtype))
    if key not in _LOADED:
        model = _read(spec)
        if not isinstance(model, torch.nn.Module) or type(model).__name__ not in FOUNDATION_CLASSES:
            raise InputError(f"{spec!r} is not a MACE model (it holds a {type(model).__name__}); expected a "
                             f".model file written by mace_run_train or fhi_al", where=FOUNDATION_KEY)
        heads = list(getattr(model, "heads", [DEFAULT_HEAD]))
        if len(heads) > 1:
            from mace.tools.scripts_utils import remove_pt_head

            model = remove_pt_head(model, None)  # mace's choice: the first head that is not pt_head
            log.info("foundation model %s has heads %s; fine-tuning from %s", spec, heads, model.heads[0])
        model = model.to(dtype).eval()
        for param in model.parameters():
            param.requires_grad_(False)
        _LOADED[key] = model
    return _LOADED[key]


def _read(spec: str) -> Any:
    import mace  # noqa: F401  - before e3nn

    if is_mace_mp_name(spec):
        from mace.calculators import mace_mp

        try:
            return mace_mp(model=str(spec).lower(), device="cpu", return_raw_model=True)
        except Exception as error:  # noqa: BLE001 - a failed download has many exception types
            cause = error.__cause__ or error
            raise InputError(f"mace could not load MACE-MP {str(spec).lower()!r} ({type(cause).__name__}: "
                             f"{cause}); it downloads on first use, so without internet access give the path "
                             f"of a local .model file", where=FOUNDATION_KEY) from None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise InputError(f"no such file {str(path)!r}; give small, medium, large or the path of a MACE .model "
                         f"file", where=FOUNDATION_KEY)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"{str(path)!r} is not a MACE model: torch cannot read it ({type(error).__name__}: "
                         f"{error})", where=FOUNDATION_KEY) from None


def foundation_elements(foundation: torch.nn.Module) -> list[int]:
    return [int(z) for z in foundation.atomic_numbers]


def check_elements(foundation: torch.nn.Module, numbers: Iterable[int], *, what: str) -> None:
    """InputError if `numbers` (e.g. the geometry's) holds elements the foundation was not trained on."""
    from ase.data import chemical_symbols

    missing = sorted(set(int(z) for z in numbers) - set(foundation_elements(foundation)))
    if missing:
        names = ", ".join(chemical_symbols[z] for z in missing)
        known = ", ".join(chemical_symbols[z] for z in foundation_elements(foundation))
        raise InputError(f"the foundation model does not know {names} of {what} (it covers {known}); choose a "
                         f"foundation model trained on every element of the system", where=FOUNDATION_KEY)


def check_run_inputs(architecture_settings: Any, numbers: Iterable[int], *, dtype: torch.dtype) -> None:
    """Before a run: the foundation loads, is a MACE model and knows every element of the geometry (InputError
    naming ARCHITECTURE.foundation_model otherwise); multihead replay data are checked too."""
    if architecture_settings.foundation_model is None:
        return
    foundation = load_foundation(architecture_settings.foundation_model, dtype=dtype)
    check_elements(foundation, numbers, what="geometry.in")
    if architecture_settings.finetuning == MULTIHEAD:
        from .replay import read_replay

        read_replay(architecture_settings.replay_dataset, foundation)


def foundation_config(foundation: torch.nn.Module) -> dict[str, Any]:
    """mace's own reading of a model's construction arguments (extract_config_mace_model)."""
    from mace.tools.scripts_utils import extract_config_mace_model

    return extract_config_mace_model(foundation)


def foundation_hypers(foundation: torch.nn.Module, requested: MaceHypers) -> MaceHypers:
    """The settings' hypers with everything the foundation fixes taken from it; what changed is logged."""
    config = foundation_config(foundation)
    hidden = config["hidden_irreps"]
    gate = config.get("gate")
    taken = {"r_max": float(config["r_max"]), "num_radial_basis": int(config["num_bessel"]),
             "num_cutoff_basis": int(config["num_polynomial_cutoff"]), "max_ell": int(config["max_ell"]),
             "num_interactions": int(config["num_interactions"]), "correlation": _correlation(config),
             "interaction": config["interaction_cls"].__name__,
             "interaction_first": config["interaction_cls_first"].__name__,
             "MLP_irreps": str(config["MLP_irreps"]), "radial_MLP": list(config["radial_MLP"]),
             "radial_type": config["radial_type"], "gate": getattr(gate, "__name__", "None") if gate else "None",
             "num_channels": int(hidden[0].mul), "max_L": int(hidden.lmax), "hidden_irreps": str(hidden)}
    changed = {name: (getattr(requested, name), value) for name, value in taken.items()
               if getattr(requested, name) != value}
    if changed:
        log.info("foundation model fixes the architecture; taken from it instead of the settings: %s",
                 ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items()))
    return replace(requested, **taken)


def _correlation(config: dict[str, Any]) -> int:
    value = config["correlation"]
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def build_finetuned(foundation: torch.nn.Module, *, zs: Sequence[int], atomic_energies_eV, seed: int,
                    dtype: torch.dtype, heads: Sequence[str] = (DEFAULT_HEAD,)) -> torch.nn.Module:
    """A ScaleShiftMACE for the elements `zs` with the foundation's weights (mace's load_foundations_elements)
    and a readout initialised from `seed`; scale, shift and avg_num_neighbors are the foundation's."""
    from mace import modules
    from mace.tools import AtomicNumberTable
    from mace.tools.finetuning_utils import load_foundations_elements
    from mace.tools.torch_tools import default_dtype

    check_elements(foundation, zs, what="the training data")
    config = foundation_config(foundation)
    config.update(atomic_numbers=list(zs), num_elements=len(zs), atomic_energies=atomic_energies_eV,
                  heads=list(heads), atomic_inter_scale=[1.0] * len(heads), atomic_inter_shift=[0.0] * len(heads))
    table = AtomicNumberTable(list(zs))
    with torch.random.fork_rng(devices=[]), default_dtype(dtype):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(**config)
        model = load_foundations_elements(model, copy.deepcopy(foundation), table, load_readout=False,
                                          max_L=int(config["hidden_irreps"].lmax), default_dtype=dtype)
    for param in model.parameters():
        param.requires_grad_(True)
    return model.to(dtype)


def freeze_param_groups(model: torch.nn.Module, *, freeze: int, weight_decay: float) -> list[dict[str, Any]]:
    """mace's parameter groups with its `--freeze N` applied (frozen modules get requires_grad False and are
    left out of the optimiser)."""
    from mace.tools.scripts_utils import get_params_options

    args = SimpleNamespace(freeze=freeze, lr_params_factors=json.dumps(FREEZE_LR_FACTORS), lr=1.0,
                           weight_decay=weight_decay, amsgrad=True, beta=ADAM_BETA1)
    options = get_params_options(args, model)
    groups = []
    for group in options["params"]:
        params = [p for p in group["params"] if p.requires_grad]
        if params and group.get("lr", 1.0) > 0.0:
            groups.append({"name": group["name"], "params": params, "weight_decay": group["weight_decay"]})
    if not groups:
        raise InputError(f"freeze {freeze} freezes every layer of the model; nothing is left to train (mace: >= 7 "
                         f"freezes the readouts too)", where="ARCHITECTURE.freeze")
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    log.debug("freeze %d: %d of %d parameters frozen", freeze, frozen, sum(p.numel() for p in model.parameters()))
    return groups
