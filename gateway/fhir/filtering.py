"""Step 6 of the pipeline: filter after (DESIGN.md "Narrow before, filter after").

Every resource in a response is checked again against the token (``AccessPolicy``), whatever
brought it there: search matches, ``_include``/``_revinclude`` entries, ``contained`` resources,
``$everything`` results, history versions, batch and transaction entries. What fails is removed.
A Bundle's ``total`` is kept only when it cannot count withheld resources; on a complete result it
is recounted, on one page of a larger result it is omitted (C-18's rule, applied here for scopes).

The functions work on the freshly parsed upstream JSON and change it in place (it is never shared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.fhir.access import SEE, AccessPolicy
from smart_auth.scopes import Letter

Release = Callable[[dict[str, Any], frozenset[str]], dict[str, Any] | None]
"""A further per-resource step after the access check (consent, minimisation), given the
resource and the patients whose compartment it is in: the resource to release (possibly a new,
smaller one), or ``None`` to withhold it."""


@dataclass(slots=True)
class Filtered:
    """How many resources a filter withheld, by kind."""

    matches: int = 0
    others: int = 0


def release_resource(
    resource: dict[str, Any],
    policy: AccessPolicy,
    letters: frozenset[Letter],
    then: Release | None = None,
) -> dict[str, Any] | None:
    """The resource if this token may see it (with contained resources it may not see removed),
    else ``None``."""
    if not policy.permits(resource, letters):
        return None
    contained = resource.get("contained")
    if isinstance(contained, list) and contained:
        kept = [
            item
            for item in contained
            if isinstance(item, dict) and policy.permits_contained(item, SEE)
        ]
        if len(kept) != len(contained):
            if kept:
                resource["contained"] = kept
            else:
                del resource["contained"]
    return then(resource, policy.owners_of(resource)) if then is not None else resource


def _is_paged(bundle: dict[str, Any]) -> bool:
    return any(
        isinstance(link, dict) and link.get("relation") in ("next", "previous", "prev")
        for link in bundle.get("link") or []
    )


def filter_bundle(
    bundle: dict[str, Any],
    policy: AccessPolicy,
    letters: frozenset[Letter],
    *,
    then: Release | None = None,
) -> Filtered:
    """Remove from a searchset or history Bundle every entry the token may not see."""
    withheld = Filtered()
    kept: list[dict[str, Any]] = []
    matches = 0
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        mode = (entry.get("search") or {}).get("mode", "match")
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            # A history entry of a deletion names a resource that can no longer be checked.
            url = str((entry.get("request") or {}).get("url", ""))
            if policy.permits_bodiless(url.split("/", 1)[0], letters):
                kept.append(entry)
            else:
                withheld.others += 1
            continue
        if mode == "outcome" and resource.get("resourceType") == "OperationOutcome":
            kept.append(entry)
            continue
        released = release_resource(resource, policy, letters if mode == "match" else SEE, then)
        if released is None:
            if mode == "match":
                withheld.matches += 1
            else:
                withheld.others += 1
            continue
        entry["resource"] = released
        kept.append(entry)
        matches += mode == "match"
    if kept:
        bundle["entry"] = kept
    else:
        bundle.pop("entry", None)
    if "total" in bundle:  # consent may withhold anywhere: never the upstream's count (C-18)
        if _is_paged(bundle):
            del bundle["total"]
        else:
            bundle["total"] = matches
    return withheld
