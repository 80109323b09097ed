"""fhirpy (``AsyncFHIRClient``) against the gateway as a third-party app uses it, with its defaults,
under a token from the real launch (the patient approves on the consent screen): create, read,
update, patch, delete and a search paged to its end.

fhirpy's ``patch()`` sends the changed elements as a plain ``application/json`` object (a JSON Merge
Patch, RFC 7396); the gateway applies it to the current resource, checks the result like any
update and sends the upstream an update pinned to that version."""

from __future__ import annotations

import pytest
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import ForbiddenError, ResourceNotFound

from tests.conftest import RunningGateway, Stack
from tests.support.tokens import AMELIA, flow_token

pytestmark = pytest.mark.e2e

PATIENT = "pat-amelia-rossi"


async def test_fhirpy_crud_paging_and_patch(gateway: RunningGateway, fresh_upstream: Stack) -> None:
    tokens = await flow_token(
        gateway, user=AMELIA, scope="launch/patient patient/Observation.cruds patient/Patient.rs"
    )
    client = AsyncFHIRClient(gateway.fhir, authorization=f"Bearer {tokens['access_token']}")

    patient = await client.reference("Patient", PATIENT).to_resource()
    assert patient["name"][0]["family"] == "Rossi"

    # create
    observation = client.resource(
        "Observation",
        status="preliminary",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
        subject={"reference": f"Patient/{PATIENT}"},
        valueQuantity={"value": 72, "unit": "/min"},
    )
    await observation.save()
    assert observation.id and observation["meta"]["versionId"]

    # read
    read = await client.reference("Observation", observation.id).to_resource()
    assert read["valueQuantity"]["value"] == 72

    # update
    read["status"] = "final"
    await read.save()
    assert (await client.reference("Observation", observation.id).to_resource())["status"] == (
        "final"
    )

    # patch, both ways fhirpy offers: the resource's patch() and the client's
    await read.patch(note=[{"text": "after a short walk"}])
    patched = await client.patch("Observation", observation.id, valueQuantity={"value": 75})
    assert patched["valueQuantity"] == {"value": 75, "unit": "/min"}  # merged, unit kept
    assert patched["note"] == [{"text": "after a short walk"}] and patched["status"] == "final"
    with pytest.raises(ForbiddenError):  # out of the token's compartment: refused
        await client.patch(
            "Observation", observation.id, subject={"reference": "Patient/pat-daniel-novak"}
        )

    # search, paged to its end through the gateway's signed next links
    search = client.resources("Observation").search(patient=PATIENT).limit(5)
    found = await search.fetch_all()
    ids = [o.id for o in found]
    assert len(ids) > 10 and len(set(ids)) == len(ids) and observation.id in ids
    assert all(o["subject"]["reference"] == f"Patient/{PATIENT}" for o in found)

    # delete
    await read.delete()  # type: ignore[no-untyped-call]
    with pytest.raises(ResourceNotFound):
        await client.reference("Observation", observation.id).to_resource()
