"""The names of the patients a user may act for, for the patient picker of the authorization
screen (whom they may act for is :mod:`gateway.fhir.representation`)."""

from __future__ import annotations

import logging
import re

import orjson

from gateway.proxy.upstream import Upstream
from gateway.web.errors import FhirError

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


async def patient_names(upstream: Upstream, ids: tuple[str, ...]) -> dict[str, str]:
    """Display names for the patient picker (the id when the name cannot be read)."""
    names: dict[str, str] = {}
    for patient in ids:
        names[patient] = patient
        try:
            answer = await upstream.send("GET", f"Patient/{patient}")
        except FhirError:
            continue
        if answer.status == 200:
            resource = orjson.loads(answer.body)
            for name in resource.get("name") or []:
                given = " ".join(name.get("given") or [])
                text = name.get("text") or f"{given} {name.get('family', '')}".strip()
                if text:
                    names[patient] = text
                    break
    return names
