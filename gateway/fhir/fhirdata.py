"""FHIR knowledge the gateway reads from data files rather than code (see ``gateway/fhir/data/``).

- ``compartmentdefinition-patient.json``: the FHIR R4 (4.0.1) Patient CompartmentDefinition,
  published by HL7 at http://hl7.org/fhir/R4/compartmentdefinition-patient.json. It lists every R4
  resource type and, for each, the search parameters that put a resource in a patient's compartment.
- ``search-parameters-r4.json``: every FHIR R4 (4.0.1) search parameter of every resource type, as
  element paths, derived from HL7's SearchParameter Bundle by ``scripts/derive_fhir_data.py`` (the
  shape is described in :mod:`gateway.fhir.searchparams`).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson


def load_json(name: str) -> Any:
    """A JSON file from ``gateway/data``."""
    return orjson.loads(resources.files("gateway.fhir").joinpath("data", name).read_bytes())


_COMPARTMENT = load_json("compartmentdefinition-patient.json")

RESOURCE_TYPES: frozenset[str] = frozenset(entry["code"] for entry in _COMPARTMENT["resource"])
"""Every FHIR R4 resource type."""

PATIENT_COMPARTMENT_PARAMS: dict[str, tuple[str, ...]] = {
    entry["code"]: tuple(entry.get("param", ())) for entry in _COMPARTMENT["resource"]
}
"""For each resource type, the search parameters that link it to a patient (empty: not in it)."""


@cache
def search_parameters() -> dict[str, dict[str, Any]]:
    """Resource type -> search parameter code -> entry (``type``, ``paths``, ``targets``,
    ``partial``), read once on first use."""
    resources_: dict[str, dict[str, Any]] = load_json("search-parameters-r4.json")["resources"]
    return resources_
