"""The synthetic fixture data as the tests know it, independently of the gateway's own code: one
Bundle per patient in ``fixtures/data`` (``1N-patient-<name>.json``, holding that patient and
every resource of theirs), plus the directory (practitioners, the organisation) that belongs to
nobody. The ownership table below is what the leak suite judges answers by: it comes from how the
data is laid out, never from :func:`gateway.fhir.compartment.patients_of`."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "data"
_PATIENT_FILE = re.compile(r"^\d+-patient-([a-z-]+)\.json$")


def _load() -> tuple[list[dict[str, Any]], dict[str, str]]:
    resources: list[dict[str, Any]] = []
    owners: dict[str, str] = {}
    for path in sorted(DATA_DIR.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        match = _PATIENT_FILE.match(path.name)
        owner = f"pat-{match[1]}" if match else None
        for entry in bundle["entry"]:
            resource = entry["resource"]
            resources.append(resource)
            if owner is not None:
                owners[f"{resource['resourceType']}/{resource['id']}"] = owner
    return resources, owners


RESOURCES, OWNERS = _load()
"""Every fixture resource; ``Type/id`` → the patient whose file holds it."""

PATIENTS = tuple(sorted(set(OWNERS.values())))


def owner(resource: dict[str, Any]) -> str | None:
    """The patient a fixture resource belongs to (``None``: not a patient's, or not a fixture)."""
    return OWNERS.get(f"{resource.get('resourceType')}/{resource.get('id')}")


def of(patient: str, rtype: str) -> list[dict[str, Any]]:
    return [r for r in RESOURCES if r["resourceType"] == rtype and owner(r) == patient]


def counts(patient: str) -> Counter[str]:
    """How many resources of each type the patient has."""
    return Counter(r["resourceType"] for r in RESOURCES if owner(r) == patient)
