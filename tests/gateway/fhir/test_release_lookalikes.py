"""What the gateway concludes once per request (the token's scopes for a type, the consent
decision for a shape of resource, the minimisation profile for a combination of purposes) and
reuses for the other resources of a response must not change what is released (CONSENT.md C-10,
C-26; SMART.md S-26): a response filtered and released in one pass, as the pipeline does it,
must equal the same response released resource by resource with nothing remembered -- a fresh
access policy, freshly compiled consents and a fresh request for each resource -- and so must
the audit's tallies per patient (A-04, A-05)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.decide import compile_consents
from consent.model import app_grant
from consent.sensitive import CONFIDENTIALITY_SYSTEM, SENSITIVITY_CODES, SENSITIVITY_SYSTEM
from gateway.fhir.access import SEARCH, SEE, AccessPolicy
from gateway.fhir.auditing import MAX_LISTED, Tally
from gateway.fhir.consent_gate import RequestConsent
from gateway.fhir.context import AccessContext
from gateway.fhir.filtering import filter_bundle, release_resource
from smart_auth.scopes import ScopeSet
from tests.support.lookalikes import OTHER, PATIENT, STRANGER, responses

NOW = datetime.now(UTC)
SCOPES = (
    "patient/*.rs",
    "patient/Observation.rs patient/Condition.rs patient/Patient.r",
    "patient/Observation.rs?category=laboratory patient/*.r",
    "user/*.rs",
)
PURPOSES = (("PATRQT",), ("HRESCH",), ("PATRQT", "HRESCH"), ("TREAT", "PATRQT"), ())
TYPES = ["Patient", "Observation", "Condition", "Encounter", "MedicationRequest", "Practitioner"]
EVERY_LABEL = [{"system": SENSITIVITY_SYSTEM, "code": c} for c in sorted(SENSITIVITY_CODES)] + [
    {"system": CONFIDENTIALITY_SYSTEM, "code": "V"}
]


def _consents(patient: str, purposes: tuple[str, ...], kind: int) -> list[dict[str, Any]]:
    """No consent, a plain grant (for ``purposes``), a grant naming every label, or a grant
    beside a deny of psychiatric data."""
    if kind == 0:
        return []
    grant = app_grant(
        patient,
        "app",
        "App",
        list(purposes) or ["PATRQT"],
        TYPES,
        [],
        NOW - timedelta(days=1),
        NOW + timedelta(days=1),
    )
    grant["id"] = f"grant-{patient}"
    if kind == 2:
        grant["provision"]["provision"] = [{"type": "permit", "securityLabel": EVERY_LABEL}]
    found = [grant]
    if kind == 3:
        deny = copy.deepcopy(grant)
        deny["id"] = f"deny-{patient}"
        deny["provision"] = {
            **deny["provision"],
            "type": "deny",
            "securityLabel": [{"system": SENSITIVITY_SYSTEM, "code": "PSY"}],
        }
        deny["provision"].pop("purpose", None)
        found.append(deny)
    return found


def _request(
    context: AccessContext, consents: dict[str, list[dict[str, Any]]], trusted: bool
) -> RequestConsent:
    request = RequestConsent(context, trusted, NOW)
    for patient in (PATIENT, OTHER, STRANGER):
        request.evaluators[patient] = compile_consents(
            consents[patient], request.attributes(patient)
        )
    return request


def _add(total: dict[str, Tally], more: dict[str, Tally]) -> None:
    """Fold one request's tallies into ``total`` as if they had been taken by the same request."""
    for patient, tally in more.items():
        into = total.setdefault(patient, Tally())
        into.decisions.extend(tally.decisions)
        into.resources.extend(tally.resources[: MAX_LISTED - len(into.resources)])
        into.types |= tally.types
        into.count += tally.count


@settings(max_examples=250, deadline=None, derandomize=True, database=None)
@given(
    resources=responses(),
    scope=st.sampled_from(SCOPES),
    purposes=st.sampled_from(PURPOSES),
    kinds=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    granted=st.tuples(st.sampled_from(PURPOSES), st.sampled_from(PURPOSES)),
    trusted=st.booleans(),
    includes=st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_c10_property_a_response_released_in_one_pass_equals_each_resource_released_alone(
    resources: list[dict[str, Any]],
    scope: str,
    purposes: tuple[str, ...],
    kinds: tuple[int, int],
    granted: tuple[tuple[str, ...], tuple[str, ...]],
    trusted: bool,
    includes: list[bool],
) -> None:
    context = AccessContext(
        issuer="i",
        subject="s",
        client_id="app",
        scopes=ScopeSet.parse(scope),
        jti="j",
        expires_at=NOW,
        patient=PATIENT,
        acts_for=frozenset({OTHER}),
        fhir_user=f"Patient/{PATIENT}",
        purposes=purposes,
    )
    consents = {
        PATIENT: _consents(PATIENT, granted[0], kinds[0]),
        OTHER: _consents(OTHER, granted[1], kinds[1]),
        STRANGER: _consents(STRANGER, purposes, 1),
    }
    modes = ["include" if includes[i % len(includes)] else "match" for i in range(len(resources))]
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"resource": copy.deepcopy(r), "search": {"mode": mode}}
            for r, mode in zip(resources, modes, strict=True)
        ],
    }
    raw = orjson.dumps(bundle)  # the answer as the upstream sent it (``note_response``)

    policy = AccessPolicy(context)
    policy.note_response(raw)
    request = _request(context, consents, trusted)
    filter_bundle(bundle, policy, SEARCH, then=request.release)

    alone: list[dict[str, Any]] = []
    tallies: dict[str, Tally] = {}
    for resource, mode in zip(resources, modes, strict=True):
        fresh = AccessPolicy(context)
        fresh.note_response(raw)
        letters = SEARCH if mode == "match" else SEE
        fresh_request = _request(context, consents, trusted)
        released = release_resource(copy.deepcopy(resource), fresh, letters, fresh_request.release)
        if released is not None:
            alone.append({"resource": released, "search": {"mode": mode}})
        _add(tallies, fresh_request.tallies)
    assert bundle.get("entry", []) == alone
    assert request.tallies == tallies
    assert bundle["total"] == sum(mode == "match" for mode in (e["search"]["mode"] for e in alone))
