"""Which security labels and clinical codes make a resource sensitive (CONSENT.md C-09, C-26;
HL7 v3 ActCode _InformationSensitivityPolicy, v3-Confidentiality).

The knowledge is data, each file naming its sources: ``consent/data/sensitive-labels.json`` (the
labels, the order of confidentiality levels, the code systems and their other names) and
``consent/data/sensitive-codes/*.json`` (one file per sensitivity code: SNOMED CT, LOINC and
RxNorm codes, and ICD-10 ranges). This module loads them and answers two questions cheaply, for
every Coding of every resource released:

- :func:`label` -- a security label's code in the one case labels are compared in (``psy`` is
  ``PSY``), and :func:`confidentiality_rank` -- its confidentiality level, if it is one;
- :func:`code_labels` -- the sensitivity codes a ``(system, code)`` pair implies. Codes match on
  system and code; systems by any of their names, without regard to case; codes exactly, except
  in ICD-10 and ICD-10-CM, which are case-insensitive and whose lists name ranges of categories:
  ``F32.9``, ``f329`` and ``F32.9 `` all fall in ``F20``-``F99``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from consent.codes import load_json

_LABELS = load_json("sensitive-labels.json")

CONFIDENTIALITY_SYSTEM: Final[str] = _LABELS["confidentiality"]["system"]
CONFIDENTIALITY_LEVEL: Final[dict[str, int]] = {
    code: rank for rank, code in enumerate(_LABELS["confidentiality"]["order"])
}
"""Confidentiality code -> rank (higher is more restrictive)."""
SENSITIVE_LEVEL: Final[int] = CONFIDENTIALITY_LEVEL[_LABELS["confidentiality"]["sensitive_from"]]
TOP_LEVEL: Final[int] = max(CONFIDENTIALITY_LEVEL.values())
SENSITIVITY_SYSTEM: Final[str] = _LABELS["sensitivity"]["system"]
SENSITIVITY_CODES: Final[frozenset[str]] = frozenset(_LABELS["sensitivity"]["codes"])
_CONFIDENTIALITY_SYSTEMS = frozenset(
    s.lower() for s in (CONFIDENTIALITY_SYSTEM, *_LABELS["confidentiality"]["aliases"])
)


def label(code: str) -> str:
    """A security label's code as labels are compared: without surrounding space, upper case."""
    return code.strip().upper()


def confidentiality_rank(code: str, system: object) -> int | None:
    """The rank of a label (already through :func:`label`) that is a confidentiality level: its
    system is absent or names v3-Confidentiality. ``None`` for every other label."""
    rank = CONFIDENTIALITY_LEVEL.get(code)
    if rank is None:
        return None
    if system is None or (isinstance(system, str) and system.lower() in _CONFIDENTIALITY_SYSTEMS):
        return rank
    return None


def _system_key(system: str) -> str:
    return system.strip().rstrip("/").lower()


@dataclass(frozen=True, slots=True)
class _Range:
    low: str
    high: str
    labels: frozenset[str]

    def holds(self, code: str) -> bool:
        """A range of categories (``F20``-``F99``) or of codes (``O98.7``) holds every code that
        starts with a category or code inside it: ``F32.9`` and ``O98.711`` alike."""
        return self.low <= code[: len(self.low)] and code[: len(self.high)] <= self.high


_NONE: Final[frozenset[str]] = frozenset()
Lookup = Callable[[str], frozenset[str]]
"""A code system's lookup: a code -> the sensitivity codes it implies."""


def _icd_code(code: str) -> str:
    return code.strip().replace(".", "").upper()


class CodeIndex:
    """The sensitive codes of every category, by code system."""

    def __init__(self, categories: list[dict[str, Any]], systems: dict[str, Any]) -> None:
        self._names: dict[str, str] = {}
        icd10: set[str] = set()
        for system, about in systems.items():
            for name in (system, *about.get("aliases", ())):
                self._names[_system_key(name)] = system
            if about.get("icd10"):
                icd10.add(system)
        codes: dict[str, dict[str, set[str]]] = {system: {} for system in systems}
        ranges: dict[str, dict[str, list[_Range]]] = {system: {} for system in icd10}
        for category in categories:
            tag = category["label"]
            for entry in category.get("codes", ()):
                system = self._names[_system_key(entry["system"])]
                code = _icd_code(entry["code"]) if system in icd10 else entry["code"]
                codes[system].setdefault(code, set()).add(tag)
            for entry in category.get("icd10_ranges", ()):
                low, high = _icd_code(entry["from"]), _icd_code(entry["to"])
                for system in icd10:
                    span = _Range(low, high, frozenset({tag}))
                    ranges[system].setdefault(low[0], []).append(span)
        self._lookups: dict[str, Lookup] = {}
        for system, table in codes.items():
            exact = {code: frozenset(tags) for code, tags in table.items()}
            self._lookups[system] = (
                _icd10_lookup(exact, ranges[system]) if system in icd10 else _exact_lookup(exact)
            )
        self.lookups: dict[str, Lookup | None] = {}
        """The lookup of each system name met so far (``None``: no list uses the system).
        Callers on a hot path read it directly and call :meth:`learn` for a name not in it."""

    def learn(self, system: str) -> Lookup | None:
        """The lookup of a system by any of its names, remembered (a response uses few systems,
        and this runs for every Coding)."""
        canonical = self._names.get(_system_key(system))
        lookup = self._lookups[canonical] if canonical is not None else None
        if len(self.lookups) < 4096:
            self.lookups[system] = lookup
        return lookup

    def labels(self, system: str, code: str) -> frozenset[str]:
        """The sensitivity codes ``(system, code)`` implies (empty for most codes)."""
        lookup = self.lookups[system] if system in self.lookups else self.learn(system)
        return _NONE if lookup is None else lookup(code)


def _exact_lookup(table: dict[str, frozenset[str]]) -> Lookup:
    def lookup(code: str) -> frozenset[str]:
        found = table.get(code)
        return found if found is not None else table.get(code.strip(), _NONE)

    return lookup


def _icd10_lookup(table: dict[str, frozenset[str]], ranges: dict[str, list[_Range]]) -> Lookup:
    def lookup(code: str) -> frozenset[str]:
        icd = _icd_code(code)
        found = table.get(icd, _NONE)
        for span in ranges.get(icd[:1], ()):
            if span.holds(icd):
                found = found | span.labels
        return found

    return lookup


def _categories() -> list[dict[str, Any]]:
    folder = resources.files("consent").joinpath("data", "sensitive-codes")
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            category = load_json("sensitive-codes", entry.name)
            if category["label"] not in SENSITIVITY_CODES:
                raise ValueError(f"{entry.name}: {category['label']} is not a sensitivity code")
            found.append(category)
    return found


INDEX: Final = CodeIndex(_categories(), _LABELS["code_systems"])


def code_labels(system: str, code: str) -> frozenset[str]:
    """The sensitivity codes a Coding with this system and code implies."""
    return INDEX.labels(system, code)
