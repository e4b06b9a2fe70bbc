"""Regenerate the settings glossary in README.md from the typed schema (the single source of defaults and docs).

    .venv/bin/python scripts/make_glossary.py          # rewrite the block between the glossary markers
    .venv/bin/python scripts/make_glossary.py --check  # exit 1 if README.md is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

from fhi_al.architectures.registry import available, hypers_class
from fhi_al.settings import schema
from fhi_al.settings.typed import section_docs

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- glossary:start -->", "<!-- glossary:end -->"

SECTIONS = [
    ("mace_settings.yaml", "GENERAL", schema.GeneralSettings),
    ("mace_settings.yaml", "ARCHITECTURE (all architectures)", schema.ArchitectureCommon),
    ("mace_settings.yaml", "TRAINING", schema.TrainingSettings),
    ("mace_settings.yaml", "MISC", schema.MaceMiscSettings),
    ("active_learning_settings.yaml", "ACTIVE_LEARNING", schema.ActiveLearningSettings),
    ("active_learning_settings.yaml", "MD", schema.MdSettings),
    ("active_learning_settings.yaml", "MD.metadynamics", schema.MetadynamicsSettings),
    ("active_learning_settings.yaml", "MISC", schema.AlMiscSettings),
    ("active_learning_settings.yaml", "REFERENCE", schema.ReferenceSettings),
    ("active_learning_settings.yaml", "REFERENCE.xtb", schema.XtbSettings),
    ("active_learning_settings.yaml", "REFERENCE.pyscf", schema.PyscfSettings),
]


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(cls) -> list[str]:
    rows = ["| key | default | unit | meaning |", "|---|---|---|---|"]
    for record in section_docs(cls):
        name = "lambda" if record["name"] == "lambda_" else record["name"]
        default = record["default"]
        if hasattr(default, "__dataclass_fields__"):
            continue  # nested sections get their own table
        doc = record["doc"]
        if record["choices"]:
            doc += f" One of: {', '.join(map(str, record['choices']))}."
        rows.append(f"| `{name}` | `{_cell(default)}` | {_cell(record['unit'])} | {_cell(doc)} |")
    return rows


def glossary() -> str:
    lines = []
    for file_name, section, cls in SECTIONS:
        lines += [f"#### {file_name} — {section}", ""] + table(cls) + [""]
    seen = set()
    for name in available():
        cls = hypers_class(name)
        if cls in seen:
            continue
        seen.add(cls)
        lines += [f"#### mace_settings.yaml — ARCHITECTURE with `model: {name}`", ""] + table(cls) + [""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{glossary()}{END}{tail}"
    if "--check" in sys.argv:
        return 0 if updated == text else 1
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
