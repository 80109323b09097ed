"""Code systems and fixed codes the consent package writes and reads (FHIR R4 Consent,
HL7 Terminology), and the loader for the package's data files (``consent/data/``).

``CLIENT_SYSTEM`` is this gateway's own identifier system for registered SMART clients: a Consent
names an app as ``actor.reference = {"type": "Device", "identifier": {"system": CLIENT_SYSTEM,
"value": client_id}}``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Final

import orjson

CLIENT_SYSTEM: Final = "urn:fhir-gateway:client"

CONSENT_SCOPE: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION: Final = "http://terminology.hl7.org/CodeSystem/consentaction"
CONSENT_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/consentcategorycodes"
LOINC: Final = "http://loinc.org"
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
V3_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
V3_OBSERVATION_VALUE: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"

PATIENT_PRIVACY: Final = "patient-privacy"
"""The only Consent.scope this gateway stores and evaluates (CONSENT.md C-01)."""

ACCESS: Final = "access"
"""The consentaction code a read (and a search) is evaluated as."""

REDACTED: Final = {"system": V3_OBSERVATION_VALUE, "code": "REDACTED", "display": "redacted"}
"""meta.security on a resource that minimisation changed (CONSENT.md C-15)."""

SUBSETTED: Final = {"system": V3_OBSERVATION_VALUE, "code": "SUBSETTED", "display": "subsetted"}
"""meta.tag on a resource reduced by ``_elements``/``_summary`` (FHIR R4 Search, "Summary")."""

R4_ONLY_TYPES: Final = frozenset(
    {
        "EffectEvidenceSynthesis",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "RiskEvidenceSynthesis",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
    }
)
"""FHIR R4 (4.0.1) resource types that R4B removed or renamed, so the R4B models of
fhir.resources do not know them (compared against HL7's R4 Patient CompartmentDefinition list)."""


def load_json(*path: str) -> Any:
    """A JSON file from ``consent/data``."""
    return orjson.loads(resources.files("consent").joinpath("data", *path).read_bytes())


def _no_patient_data_types() -> frozenset[str]:
    groups = load_json("no-patient-data-types.json")
    return frozenset(name for key, names in groups.items() if key != "_comment" for name in names)


NO_PATIENT_DATA_TYPES: Final = _no_patient_data_types()
"""Resource types that carry no patient data (``consent/data/no-patient-data-types.json``): they
need no consent, and references to them keep their display (CONSENT.md C-26, C-27)."""
