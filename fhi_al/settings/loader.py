"""Reads mace_settings.yaml and active_learning_settings.yaml into a validated `RunSettings`.

YAML problems, unknown or mistyped keys and contradictory settings become `SettingsError`s that name the file,
the dotted key, the value given and what is allowed; nothing is written while reading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..errors import InputError, SettingsError
from . import schema
from .exploration import check_exploration
from .md_block import build_md, check_md_trajectories
from .typed import build_section, field_names, suggest

log = logging.getLogger(__name__)

_SETTINGS_LOGGER = "fhi_al.settings"


# ------------------------------------------------------------------------------------------------------ YAML
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (lines {seen[key]} and {line})", key_node.start_mark)
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict:
    """The top-level mapping of a settings file; InputError if missing, SettingsError if not valid YAML."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found; every run folder needs mace_settings.yaml and "
                         "active_learning_settings.yaml (examples in the repository's settings/ folder)",
                         where=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the file: {error}", where=str(path)) from None
    _check_tabs(text, path)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise SettingsError(f"not valid YAML: {problem}", where=where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"expected sections (e.g. GENERAL:, ACTIVE_LEARNING:) at the top level, got "
                            f"{type(data).__name__}", where=str(path))
    return data


def _check_tabs(text: str, path: Path) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[:len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            raise SettingsError("tab character in the indentation; YAML indents with spaces only",
                                where=f"{path}, line {number}")


# ---------------------------------------------------------------------------------------------- the sections
@contextlib.contextmanager
def _collect_notes(notes: list[str]) -> Iterator[None]:
    """Record the INFO notes the section builders log (accepted-but-unused keys) before logging is set up."""

    class _Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    logger = logging.getLogger(_SETTINGS_LOGGER)
    handler, old_level = _Collector(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _split_sections(data: dict, sections: dict, path: Path) -> dict[str, Any]:
    """Map the file's sections (case-insensitive names) onto the schema's; unknown sections are errors."""
    known = {name.lower(): name for name in sections}
    raw: dict[str, Any] = {}
    for key, value in data.items():
        name = known.get(str(key).lower())
        if name is None and str(key).upper() in schema.UNUSED_SECTIONS:
            log.info("%s: section %s belongs to the original tool's cluster set-up and is ignored.", path.name, key)
            continue
        if name is None:
            raise SettingsError(f"unknown section.{suggest(str(key), list(sections))} Allowed sections: "
                                f"{', '.join(sections)}", where=f"{key}")
        raw[name] = value
    return raw


_RENAMED = {f.name: schema.yaml_key(f) for f in dataclasses.fields(schema.ActiveLearningSettings)
            if schema.yaml_key(f) != f.name}


def _with_file(error: SettingsError, path: Path) -> SettingsError:
    """The same error with the file it came from appended (the dotted key stays in `where`)."""
    message = str(error)
    if error.where and message.startswith(f"{error.where}: "):
        message = message[len(error.where) + 2:]
    for attribute, key in _RENAMED.items():  # list keys as users write them (lambda, not lambda_)
        message = message.replace(f" {attribute},", f" {key},")
    return SettingsError(f"{message} (in {path})", where=error.where)


def load_mace_settings(path: Path) -> schema.MaceSettings:
    path = Path(path)
    try:
        raw = _split_sections(read_yaml(path), schema.MACE_SECTIONS, path)
        _move_training_keys(raw)
        values = {"architecture": build_architecture(raw.get("ARCHITECTURE"))}
        for name, (attr, cls, unused) in schema.MACE_SECTIONS.items():
            if cls is not None:
                values[attr] = build_section(cls, raw.get(name), name, accepted_unused=unused)
        return schema.MaceSettings(**values)
    except SettingsError as error:
        raise _with_file(error, path) from None


def _move_training_keys(raw: dict) -> None:
    """The original tool kept e.g. `scaling` under TRAINING; it is an ARCHITECTURE hyperparameter here."""
    training, architecture = raw.get("TRAINING"), raw.get("ARCHITECTURE")
    if not isinstance(training, dict) or not isinstance(architecture, (dict, type(None))):
        return
    training, architecture = dict(training), dict(architecture or {})
    for key in schema.TRAINING_MOVED_TO_ARCHITECTURE:
        if key in training:
            value = training.pop(key)
            if key not in architecture:
                architecture[key] = value
                log.info("TRAINING.%s is read as ARCHITECTURE.%s (where fhi_al keeps it).", key, key)
    raw["TRAINING"], raw["ARCHITECTURE"] = training, architecture


def load_al_settings(path: Path) -> schema.AlSettings:
    path = Path(path)
    try:
        raw = _split_sections(read_yaml(path), schema.AL_SECTIONS, path)
        values = {"reference": build_reference(raw.get("REFERENCE"))}
        for name, (attr, cls, unused) in schema.AL_SECTIONS.items():
            if cls is not None and cls is not schema.MdSettings:
                values[attr] = build_section(cls, raw.get(name), name, accepted_unused=unused)
        values["md"], values["md_by_trajectory"] = build_md(raw.get("MD"))
        return schema.AlSettings(**values)
    except SettingsError as error:
        raise _with_file(error, path) from None


def build_reference(raw: Any) -> schema.ReferenceSettings:
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(f"expected a mapping of keys to values, got {type(raw).__name__}", where="REFERENCE")
    raw = dict(raw or {})
    nested = {}
    for name, cls in schema.REFERENCE_SUBSECTIONS.items():
        key = next((k for k in raw if str(k).lower() == name), None)
        nested[name] = build_section(cls, raw.pop(key) if key is not None else None, f"REFERENCE.{name}")
    top = build_section(schema.ReferenceSettings, raw, "REFERENCE")
    return dataclasses.replace(top, **nested)


# ------------------------------------------------------------------------------------------------ ARCHITECTURE
def hypers_class(model: str) -> type:
    """The Hypers dataclass of an architecture, from its torch-free `hypers` module."""
    from ..architectures import registry

    try:
        return registry.hypers_class(model)
    except ModuleNotFoundError as error:
        raise SettingsError(f"architecture {model!r} is not available in this installation ({error.name} is "
                            f"missing)", where="ARCHITECTURE.model") from None


def build_architecture(raw: Any) -> schema.ArchitectureSettings:
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(f"expected a mapping of keys to values, got {type(raw).__name__}", where="ARCHITECTURE")
    raw = dict(raw or {})
    common_keys = field_names(schema.ArchitectureCommon)
    common = build_section(schema.ArchitectureCommon, {k: raw.pop(k) for k in common_keys if k in raw},
                           "ARCHITECTURE")
    from ..training import statistics_refs

    statistics = statistics_refs.extract_references(raw, section="ARCHITECTURE")
    from ..architectures import registry

    model = registry.canonical_name(common.model)
    hypers_cls = hypers_class(model)
    # The engine's keys take part in did-you-mean; keys moved from TRAINING are ignored by architectures
    # without them.
    unused = schema.ARCHITECTURE_UNUSED + schema.TRAINING_MOVED_TO_ARCHITECTURE + tuple(common_keys)
    hypers = build_section(hypers_cls, raw, "ARCHITECTURE", accepted_unused=unused)
    energies = normalise_atomic_energies(common.atomic_energies)
    unknown = sorted(set(statistics) - set(field_names(hypers_cls)))
    if unknown:
        raise SettingsError(f"unknown key {unknown[0]!r}.{suggest(unknown[0], field_names(hypers_cls))}",
                            where=f"ARCHITECTURE.{unknown[0]}")
    engine = {name: _per_element(getattr(common, name), name) for name in ("energy_shift", "energy_scale")}
    flags = {name: getattr(common, name) for name in ("energy_shift_trainable", "energy_scale_trainable", "zbl",
                                                      "zbl_cutoff", "zbl_switch_width", "foundation_model",
                                                      "finetuning", "freeze", "replay_dataset")}
    return schema.ArchitectureSettings(model=model, atomic_energies=energies, hypers=hypers,
                                       hypers_statistics=statistics, **engine, **flags)


def _per_element(value: Any, name: str) -> Any:
    """An engine shift/scale: a number, a statistic reference (checked) or element -> value by atomic number."""
    from ..training import statistics_refs

    if isinstance(value, str):
        statistics_refs.parse_reference(value, where=f"ARCHITECTURE.{name}")
        return value
    if isinstance(value, dict):
        return normalise_atomic_energies(value, where=f"ARCHITECTURE.{name}")
    return value


def normalise_atomic_energies(raw: dict | None,
                              where: str = "ARCHITECTURE.atomic_energies") -> dict[int, float] | None:
    """Keys given as element symbols ('H'), atomic numbers (1) or number strings ('1') -> atomic numbers."""
    if raw is None:
        return None
    from ase.data import atomic_numbers, chemical_symbols

    symbols = [s for s in chemical_symbols if s != "X"]
    energies: dict[int, float] = {}
    for key, value in raw.items():
        text = str(key).strip()
        if text.isdigit():
            number = int(text)
            if not 1 <= number < len(chemical_symbols):
                raise SettingsError(f"atomic number {number} is out of range 1-{len(chemical_symbols) - 1}",
                                    where=f"{where}.{key}")
        elif text.capitalize() in symbols:
            number = atomic_numbers[text.capitalize()]
        else:
            raise SettingsError(f"{key!r} is neither an element symbol nor an atomic number.{suggest(text, symbols)}",
                                where=f"{where}.{key}")
        if number in energies:
            raise SettingsError(f"element {chemical_symbols[number]} (Z={number}) is given twice",
                                where=f"{where}.{key}")
        energies[number] = float(value)
    return dict(sorted(energies.items()))


# ---------------------------------------------------------------------------------------- cross-field checks
def _absolute(value: str | None, run_dir: Path) -> str | None:
    if value is None:
        return None
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else (run_dir / path).resolve())


def _resolve_paths(al: schema.AlSettings, run_dir: Path) -> schema.AlSettings:
    section = al.active_learning
    size = section.initial_foundational_size
    if size.lower() in schema.FOUNDATION_SIZES:
        size = size.lower()
    else:
        size = _absolute(size, run_dir)
    section = dataclasses.replace(section, species_dir=_absolute(section.species_dir, run_dir),
                                  aims_lib_path=_absolute(section.aims_lib_path, run_dir),
                                  initial_foundational_size=size)
    calculator = al.reference.calculator or ("aims" if section.aims_lib_path else "xtb")
    return dataclasses.replace(al, active_learning=section,
                               reference=dataclasses.replace(al.reference, calculator=calculator))


def check_consistency(al: schema.AlSettings, run_dir: Path | None = None) -> None:
    """Checks that involve more than one key; raises SettingsError naming the key to change."""
    check_md_trajectories(al)
    check_exploration(al, run_dir)
    section, calculator = al.active_learning, al.reference.calculator
    if calculator == "aims":
        if section.aims_lib_path is None:
            raise SettingsError("REFERENCE.calculator is aims but no FHI-aims library is given; set "
                                "aims_lib_path to libaims*.so or choose calculator xtb, pyscf or emt",
                                where="ACTIVE_LEARNING.aims_lib_path")
        if not Path(section.aims_lib_path).is_file():
            raise SettingsError(f"got {section.aims_lib_path!r}: no such file; the aims reference needs the FHI-aims "
                                f"shared library (libaims*.so)", where="ACTIVE_LEARNING.aims_lib_path")
        if section.species_dir is None:
            raise SettingsError("the aims reference needs the FHI-aims species_defaults folder "
                                "(e.g. species_defaults/defaults_2020/light)", where="ACTIVE_LEARNING.species_dir")
        if not Path(section.species_dir).is_dir():
            raise SettingsError(f"got {section.species_dir!r}: no such folder; expected an FHI-aims "
                                f"species_defaults folder", where="ACTIVE_LEARNING.species_dir")
    if section.initial_sampling == "mace-mp0":
        size = section.initial_foundational_size
        if size not in schema.FOUNDATION_SIZES and not Path(size).is_file():
            raise SettingsError(f"got {size!r}; allowed: {', '.join(schema.FOUNDATION_SIZES)} or the path of an "
                                f"existing model file", where="ACTIVE_LEARNING.initial_foundational_size")


def _cross_notes(al: schema.AlSettings) -> list[str]:
    notes = []
    section = al.active_learning
    if al.reference.calculator != "aims" and section.aims_lib_path is not None:
        notes.append(f"ACTIVE_LEARNING.aims_lib_path is set but the reference is {al.reference.calculator}; "
                     f"the FHI-aims library is not used.")
    if (section.initial_sampling == "xtb-md" and al.reference.calculator == "xtb"
            and section.initial_xtb_method == al.reference.xtb.method):
        notes.append(f"ACTIVE_LEARNING.initial_sampling is xtb-md with the reference's own method "
                     f"({section.initial_xtb_method}): every frame is computed twice; aimd takes the label from "
                     f"the MD step that made the frame.")
    if section.reference_group_size > 1 and not section.parallel:
        notes.append("ACTIVE_LEARNING.reference_group_size only matters in parallel mode (parallel: true).")
    return notes


FOUNDATION_ARCHITECTURES = ("MACE", "ScaleShiftMACE")


def resolve_foundation(mace: schema.MaceSettings, run_dir: Path) -> schema.MaceSettings:
    """ARCHITECTURE.foundation_model and replay_dataset as absolute paths (a MACE-MP size stays a name), checked:
    SettingsError naming the key for a missing file, a non-MACE architecture or multihead without replay data."""
    arch = mace.architecture
    foundation, replay = arch.foundation_model, arch.replay_dataset
    if mace.misc.export_lammps and arch.model not in FOUNDATION_ARCHITECTURES:
        raise SettingsError(f"LAMMPS export is for MACE models; ARCHITECTURE.model is {arch.model!r}",
                            where="MISC.export_lammps")
    if mace.misc.export_lammps and (arch.energy_shift is not None or arch.energy_scale is not None or arch.zbl):
        raise SettingsError("the engine's energy terms (ARCHITECTURE.energy_shift, energy_scale, zbl) are not part "
                            "of the mace model file, so the LAMMPS file would lack them; switch them off or "
                            "export_lammps", where="MISC.export_lammps")
    if foundation is None:
        return mace
    if arch.model not in FOUNDATION_ARCHITECTURES:
        raise SettingsError(f"fine-tuning a foundation model needs ARCHITECTURE.model MACE or ScaleShiftMACE, got "
                            f"{arch.model!r}", where="ARCHITECTURE.foundation_model")
    if foundation.lower() in schema.FOUNDATION_SIZES:
        foundation = foundation.lower()
    else:
        foundation = _absolute(foundation, run_dir)
        if not Path(foundation).is_file():
            raise SettingsError(f"got {arch.foundation_model!r}: no such file; give small, medium, large or the "
                                f"path of a MACE .model file", where="ARCHITECTURE.foundation_model")
    if arch.finetuning == "multihead":
        if replay is None:
            raise SettingsError("multihead fine-tuning replays the foundation's own data on its head: give an extxyz "
                                "file of labelled frames (REF_energy, REF_forces)", where="ARCHITECTURE.replay_dataset")
        replay = _absolute(replay, run_dir)
        if not Path(replay).is_file():
            raise SettingsError(f"got {arch.replay_dataset!r}: no such file", where="ARCHITECTURE.replay_dataset")
    architecture = dataclasses.replace(arch, foundation_model=foundation, replay_dataset=replay)
    return dataclasses.replace(mace, architecture=architecture)


def _foundation_notes(mace: schema.MaceSettings) -> list[str]:
    arch = mace.architecture
    if arch.foundation_model is not None:
        return []
    given = [name for name in ("freeze", "replay_dataset") if getattr(arch, name) is not None]
    given += ["finetuning"] if arch.finetuning != "naive" else []
    return [f"ARCHITECTURE.{name} only matters with ARCHITECTURE.foundation_model; ignored." for name in given]


def load_run_settings(run_dir: Path) -> schema.RunSettings:
    """Read, validate and cross-check both settings files of `run_dir`."""
    run_dir = Path(run_dir).resolve()
    notes: list[str] = []
    with _collect_notes(notes):
        mace_path = run_dir / schema.MACE_SETTINGS_FILE
        mace = load_mace_settings(mace_path)
        try:
            mace = resolve_foundation(mace, run_dir)
        except SettingsError as error:
            raise _with_file(error, mace_path) from None
        al_path = run_dir / schema.AL_SETTINGS_FILE
        al = _resolve_paths(load_al_settings(al_path), run_dir)
    try:
        check_consistency(al, run_dir)
    except SettingsError as error:
        raise _with_file(error, al_path) from None
    mace = _check_machine(mace, run_dir)
    return schema.RunSettings(mace=mace, al=al, notes=tuple(notes + _cross_notes(al) + _foundation_notes(mace)))


def _check_machine(mace: schema.MaceSettings, run_dir: Path) -> schema.MaceSettings:
    """What can only fail later (device, dtype, checkpoint to resume from), checked now; -> mace with the device
    spelt the way torch reads it. (A MACE-MP-0 model that is neither cached nor downloadable fails when the
    initial dataset loads it, before any reference call: no network is probed here.)"""
    from . import machine

    try:
        device = machine.check_mace_settings(mace, run_dir)
    except SettingsError as error:
        raise _with_file(error, run_dir / schema.MACE_SETTINGS_FILE) from None
    return machine.normalised(mace, device)
