"""People's names read from the FHIR server: the patients a user may act for (the patient picker
of the authorization screen, the patient's pages; whom they may act for is
:mod:`gateway.fhir.representation`), and the people named in the patient's access history."""

from __future__ import annotations

import logging
import re

import orjson

from gateway.proxy.upstream import Upstream
from gateway.web.errors import FhirError

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


PEOPLE = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})


async def person_names(upstream: Upstream, references: tuple[str, ...]) -> dict[str, str]:
    """Display names of ``Type/id`` references to people (the reference itself when the name
    cannot be read; a reference to anything else is not looked up)."""
    names: dict[str, str] = {}
    for reference in dict.fromkeys(references):
        names[reference] = reference
        kind, _, rid = reference.partition("/")
        if kind not in PEOPLE or not _ID.match(rid):
            continue
        try:
            answer = await upstream.send("GET", f"{kind}/{rid}")
        except FhirError:
            continue
        if answer.status != 200:
            continue
        try:
            resource = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            continue
        for name in resource.get("name") or []:
            if not isinstance(name, dict):
                continue
            given = " ".join(str(g) for g in name.get("given") or [])
            text = name.get("text") or f"{given} {name.get('family', '')}".strip()
            if text:
                names[reference] = str(text)
                break
    return names


async def patient_names(upstream: Upstream, ids: tuple[str, ...]) -> dict[str, str]:
    """Display names for the patient picker (the id when the name cannot be read)."""
    found = await person_names(upstream, tuple(f"Patient/{patient}" for patient in ids))
    return {patient: found[f"Patient/{patient}"].removeprefix("Patient/") for patient in ids}
