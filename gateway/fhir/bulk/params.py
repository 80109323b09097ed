"""The kick-off request of a bulk export (FHIR Bulk Data Access IG v2.0, "Bulk Data Kick-off
Request"): which level, which types, which filters, checked against the token before a job is
made.

Checked here, so that a job never holds what a search would refuse:

- ``Prefer: respond-async`` is required; ``Accept``, when given, is ``application/fhir+json``;
- ``_outputFormat`` is ``application/fhir+ndjson`` or one of its aliases (``application/ndjson``,
  ``ndjson``);
- ``_since`` is a FHIR instant (with a time zone);
- ``_type`` names FHIR R4 types, each covered by one of the token's ``system/`` scopes with the
  search letter; without ``_type``, every type those scopes cover is exported (the patient
  compartment's types for Patient and Group level; those and the types that hold no patient data
  for system level). AuditEvent and Consent are never exported: the gateway serves them itself;
- ``_typeFilter`` is ``Type?query``: the type must be exported, and the query passes the checks a
  search of that type passes (parsed as one, authorized as one), with none of the parameters
  that shape a search's answer rather than select resources (``_include``, ``_count``...);
- any other parameter is refused (400), rather than silently ignored.

Only ``system/`` scopes may export: a patient-context or user token is refused (403).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl

from gateway.fhir import compartment, searchparams
from gateway.fhir.access import NEVER_FROM_UPSTREAM, authorize
from gateway.fhir.context import AccessContext
from gateway.fhir.fhirdata import RESOURCE_TYPES
from gateway.fhir.interaction import parse
from gateway.web.errors import BadRequest, FhirError, Forbidden
from smart_auth.scopes import Context

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/fhir ndjson", "application/ndjson", "ndjson"})
"""``_outputFormat`` values meaning NDJSON (Bulk Data IG v2.0: the aliases servers accept), and
``application/fhir+ndjson`` as a query string decodes it when the client did not encode the
``+`` (a space, in ``application/x-www-form-urlencoded``)."""

_KNOWN = frozenset({"_outputFormat", "_since", "_type", "_typeFilter"})
_SHAPING = frozenset(
    {
        "_include",
        "_revinclude",
        "_count",
        "_sort",
        "_elements",
        "_summary",
        "_total",
        "_contained",
        "_containedType",
        "_type",
        "_format",
        "_pretty",
    }
)
_COMMON = frozenset({"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"})
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


class Level(StrEnum):
    """What a kick-off exports."""

    SYSTEM = "system"
    PATIENT = "patient"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """A checked kick-off: what the job exports."""

    level: Level
    types: tuple[str, ...]
    since: str | None = None
    type_filters: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    """``(type, parameters)`` per ``_typeFilter``; a type with filters is exported once per
    filter (FHIR: filters of one type combine with OR)."""
    group: str | None = None


def exportable_types(context: AccessContext, level: Level) -> tuple[str, ...]:
    """The types this token's ``system/`` scopes let it search, that the level exports."""
    scopes = [s for s in context.scopes if s.context is Context.SYSTEM and "s" in s.letters]
    candidates = set(compartment.PUBLIC_TYPES) if level is Level.SYSTEM else set()
    candidates |= {t for t in RESOURCE_TYPES if compartment.is_compartment_type(t)}
    candidates.add("Patient")
    return tuple(
        sorted(
            t
            for t in candidates
            if t not in NEVER_FROM_UPSTREAM and any(s.covers_type(t) for s in scopes)
        )
    )


def _require_system(context: AccessContext) -> None:
    if not any(s.context is Context.SYSTEM and "s" in s.letters for s in context.scopes):
        raise Forbidden(
            "bulk export needs a backend-services token with system/ scopes that allow searching"
        )


def check_headers(headers: Mapping[str, str]) -> None:
    """``Prefer: respond-async`` (required) and ``Accept`` (FHIR JSON, when given)."""
    prefer = [p.strip().lower() for p in headers.get("Prefer", "").split(",")]
    if "respond-async" not in prefer:
        raise BadRequest("a bulk export kick-off needs the header 'Prefer: respond-async'")
    accept = headers.get("Accept")
    if accept and not any(
        a.split(";")[0].strip() in ("application/fhir+json", "application/json", "*/*")
        for a in accept.split(",")
    ):
        raise BadRequest("a bulk export kick-off answers application/fhir+json only")


def parse_kickoff(
    context: AccessContext,
    level: Level,
    query: Iterable[tuple[str, str]],
    group: str | None = None,
) -> ExportRequest:
    """The kick-off's parameters, checked (the module's docstring)."""
    _require_system(context)
    params = list(query)
    for name, _ in params:
        if name not in _KNOWN:
            raise BadRequest(f"the parameter '{name}' is not supported by this bulk export")
    for name in ("_outputFormat", "_since", "_type"):
        if len([n for n, _ in params if n == name]) > 1:
            raise BadRequest(f"'{name}' may be given once")
    values = dict((n, v) for n, v in params if n != "_typeFilter")
    output = values.get("_outputFormat")
    if output is not None and output not in OUTPUT_FORMATS:
        raise BadRequest(f"_outputFormat '{output}' is not supported: use {NDJSON}")
    since = values.get("_since")
    if since is not None and not _INSTANT.match(since):
        raise BadRequest("_since must be a FHIR instant with a time zone (2026-01-31T00:00:00Z)")
    allowed = exportable_types(context, level)
    if "_type" in values:
        wanted = [t.strip() for t in values["_type"].split(",")]
        for rtype in wanted:
            if rtype not in RESOURCE_TYPES:
                raise BadRequest(f"_type: '{rtype}' is not a FHIR R4 resource type")
            if rtype in NEVER_FROM_UPSTREAM:
                raise Forbidden(f"{rtype} is not exported: the gateway serves it at /fhir/{rtype}")
            if rtype not in allowed:
                if level is not Level.SYSTEM and not compartment.is_compartment_type(rtype):
                    raise BadRequest(f"_type: {rtype} is not in the patient compartment")
                raise Forbidden(f"the access token has no system/ scope that allows {rtype}")
        types = tuple(dict.fromkeys(wanted))
    else:
        types = allowed
    if not types:
        raise Forbidden("the access token's scopes allow no type this export could include")
    filters = tuple(
        _type_filter(context, value, types) for n, value in params if n == "_typeFilter"
    )
    return ExportRequest(level, types, since, filters, group)


def _type_filter(
    context: AccessContext, value: str, types: tuple[str, ...]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    rtype, mark, query = value.partition("?")
    if not mark or not query:
        raise BadRequest("_typeFilter is 'Type?parameters'")
    if rtype not in types:
        raise BadRequest(f"_typeFilter names {rtype}, which this export does not include")
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    if not pairs:
        raise BadRequest("_typeFilter has no parameters")
    known = searchparams.param_names(rtype)
    for name, _ in pairs:
        base = name.split(":", 1)[0]
        if base in _SHAPING or base.startswith("_has") or "." in base:
            raise BadRequest(f"_typeFilter: '{name}' does not select resources; not allowed here")
        if base not in known and base not in _COMMON:
            raise BadRequest(f"_typeFilter: '{name}' is not a search parameter of {rtype}")
    try:
        authorize(context, parse("GET", rtype, pairs))  # the checks a search of it passes
    except FhirError as exc:
        raise type(exc)(f"_typeFilter: {exc.diagnostics}") from None
    return rtype, tuple(pairs)
