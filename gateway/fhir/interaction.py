"""Step 2 of the pipeline: what FHIR REST interaction a request is (FHIR R4 RESTful API, 3.1.0).

``parse`` turns the method, the path under ``/fhir`` and the query into a frozen
:class:`FhirInteraction`, or raises a :class:`~gateway.web.errors.FhirError`. It is deny by default:
a path the gateway does not recognise is refused here and never reaches the upstream. The upstream
request is rebuilt from the parsed value (``upstream_path`` + ``params``), never copied from the raw
request, so nothing unrecognised can slip through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from gateway.fhir.fhirdata import RESOURCE_TYPES
from gateway.web.errors import BadRequest, MethodNotAllowed, NotFound


class Kind(StrEnum):
    """Interaction kinds; values are FHIR ``restful-interaction`` codes where one exists."""

    READ = "read"
    VREAD = "vread"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    CREATE = "create"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    SEARCH_TYPE = "search-type"
    SEARCH_SYSTEM = "search-system"
    SEARCH_COMPARTMENT = "search-compartment"
    CAPABILITIES = "capabilities"
    BATCH = "batch"
    TRANSACTION = "transaction"
    OPERATION = "operation"
    PAGE = "page"
    """A sealed paging link of the gateway's own (``_page/{token}``)."""


SEARCH_KINDS = frozenset({Kind.SEARCH_TYPE, Kind.SEARCH_SYSTEM, Kind.SEARCH_COMPARTMENT})
HISTORY_KINDS = frozenset({Kind.HISTORY_INSTANCE, Kind.HISTORY_TYPE, Kind.HISTORY_SYSTEM})
WRITE_KINDS = frozenset({Kind.CREATE, Kind.UPDATE, Kind.PATCH, Kind.DELETE})

# Operations the gateway knows how to check; any other ``$operation`` is refused (deny by default).
# ``(level, name)``: level is "system", "type" or "instance".
SUPPORTED_OPERATIONS: frozenset[tuple[str, str]] = frozenset(
    {("instance", "everything"), ("type", "validate"), ("instance", "validate")}
)

# Parameters that only shape the response format; the gateway always speaks JSON to the upstream.
_FORMAT_PARAMS = frozenset({"_format", "_pretty"})

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_PAGE_TOKEN = re.compile(r"^[A-Za-z0-9_\-.]{1,4096}$")
_OPERATION = re.compile(r"^\$[A-Za-z][A-Za-z0-9\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class FhirInteraction:
    """One FHIR REST interaction, as understood by the gateway."""

    kind: Kind
    method: str
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    operation: str | None = None
    compartment: tuple[str, str] | None = None
    params: tuple[tuple[str, str], ...] = ()
    form_post: bool = False
    """True for ``POST [type]/_search`` (the parameters travel as a form body)."""
    page: str | None = None
    """The token of a ``_page/{token}`` link."""

    @property
    def upstream_path(self) -> str:
        """The path relative to the upstream FHIR base, rebuilt from validated parts."""
        parts: list[str] = []
        if self.compartment is not None:
            parts += [self.compartment[0], self.compartment[1]]
        if self.resource_type:
            parts.append(self.resource_type)
        if self.resource_id:
            parts.append(self.resource_id)
        if self.kind in HISTORY_KINDS or self.kind is Kind.VREAD:
            parts.append("_history")
        if self.version_id:
            parts.append(self.version_id)
        if self.operation:
            parts.append(f"${self.operation}")
        if self.kind is Kind.CAPABILITIES:
            parts.append("metadata")
        if self.form_post:
            parts.append("_search")
        return "/".join(parts)

    def with_params(self, params: Iterable[tuple[str, str]]) -> FhirInteraction:
        return replace(self, params=tuple(params))

    def param_values(self, name: str) -> list[str]:
        return [value for key, value in self.params if key == name]


def _resource_type(segment: str) -> str:
    if segment not in RESOURCE_TYPES:
        raise NotFound(f"'{segment}' is not a FHIR R4 resource type this gateway serves")
    return segment


def _resource_id(segment: str) -> str:
    # "." and ".." match FHIR's id pattern but are path traversal, never ids.
    if not _ID.match(segment) or segment.strip(".") == "":
        raise BadRequest("a resource id is 1-64 characters of A-Z, a-z, 0-9, '-' and '.'")
    return segment


def _operation(segment: str, level: str) -> str:
    if not _OPERATION.match(segment):
        raise BadRequest(f"'{segment}' is not a valid operation name")
    name = segment[1:]
    if (level, name) not in SUPPORTED_OPERATIONS:
        raise NotFound(f"the operation ${name} is not supported by this gateway at {level} level")
    return name


def _method(method: str, allowed: dict[str, Kind]) -> Kind:
    kind = allowed.get(method)
    if kind is None:
        raise MethodNotAllowed(f"{method} is not allowed here; use {', '.join(sorted(allowed))}")
    return kind


def parse(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]] = (),
    form: Iterable[tuple[str, str]] = (),
) -> FhirInteraction:
    """Parse a request under the FHIR base. ``path`` is relative to it (no leading slash);
    ``form`` holds the parameters of a ``POST _search`` body."""
    method = method.upper()
    segments = path.split("/") if path.strip("/") else []
    if any(segment == "" for segment in segments):
        raise BadRequest("the path has an empty segment")
    params = tuple((k, v) for k, v in query if k not in _FORMAT_PARAMS)
    n = len(segments)
    first = segments[0] if segments else ""

    if n == 0:
        kind = _method(method, {"GET": Kind.SEARCH_SYSTEM, "POST": Kind.BATCH})
        return FhirInteraction(kind, method, params=params)
    if n == 1 and first == "metadata":
        _method(method, {"GET": Kind.CAPABILITIES})
        return FhirInteraction(Kind.CAPABILITIES, method)
    if n == 1 and first == "_history":
        _method(method, {"GET": Kind.HISTORY_SYSTEM})
        return FhirInteraction(Kind.HISTORY_SYSTEM, method, params=params)
    if n == 1 and first == "_search":
        _method(method, {"POST": Kind.SEARCH_SYSTEM})
        return FhirInteraction(
            Kind.SEARCH_SYSTEM, method, params=params + tuple(form), form_post=True
        )
    if n == 2 and first == "_page":
        _method(method, {"GET": Kind.PAGE})
        if not _PAGE_TOKEN.match(segments[1]):
            raise BadRequest("this is not a paging link of this gateway")
        return FhirInteraction(Kind.PAGE, method, page=segments[1])
    if first.startswith("$"):
        raise NotFound(f"the operation {first} is not supported by this gateway at system level")

    rtype = _resource_type(first)
    if n == 1:
        kind = _method(method, {"GET": Kind.SEARCH_TYPE, "POST": Kind.CREATE})
        return FhirInteraction(kind, method, rtype, params=params)

    second = segments[1]
    if n == 2 and second == "_search":
        _method(method, {"POST": Kind.SEARCH_TYPE})
        return FhirInteraction(
            Kind.SEARCH_TYPE, method, rtype, params=params + tuple(form), form_post=True
        )
    if n == 2 and second == "_history":
        _method(method, {"GET": Kind.HISTORY_TYPE})
        return FhirInteraction(Kind.HISTORY_TYPE, method, rtype, params=params)
    if second.startswith("$"):
        operation = _operation(second, "type")
        _method(method, {"POST": Kind.OPERATION})  # $validate takes the resource as its body
        return FhirInteraction(Kind.OPERATION, method, rtype, operation=operation, params=params)

    rid = _resource_id(second)
    if n == 2:
        kind = _method(
            method,
            {"GET": Kind.READ, "PUT": Kind.UPDATE, "PATCH": Kind.PATCH, "DELETE": Kind.DELETE},
        )
        return FhirInteraction(kind, method, rtype, rid, params=params)

    third = segments[2]
    if n == 3 and third == "_history":
        _method(method, {"GET": Kind.HISTORY_INSTANCE})
        return FhirInteraction(Kind.HISTORY_INSTANCE, method, rtype, rid, params=params)
    if n == 4 and third == "_history":
        _method(method, {"GET": Kind.VREAD})
        return FhirInteraction(Kind.VREAD, method, rtype, rid, _resource_id(segments[3]))
    if n == 3 and third.startswith("$"):
        op = _operation(third, "instance")
        # $everything's parameters travel in the query: GET only (a POST body would be ignored).
        allowed = {"GET": Kind.OPERATION} if op == "everything" else {"POST": Kind.OPERATION}
        _method(method, allowed)
        return FhirInteraction(Kind.OPERATION, method, rtype, rid, operation=op, params=params)
    if n == 3 and rtype == "Patient":
        # Compartment search: Patient/[id]/[type] (FHIR R4 3.1.0.8.3).
        _method(method, {"GET": Kind.SEARCH_COMPARTMENT})
        return FhirInteraction(
            Kind.SEARCH_COMPARTMENT,
            method,
            _resource_type(third),
            compartment=(rtype, rid),
            params=params,
        )
    raise NotFound(f"'{path}' is not a FHIR interaction this gateway supports")


_PATH_WORDS = frozenset(
    {"_history", "_search", "_export", "metadata", ".well-known", "smart-configuration"}
)


def path_shape(path: str, base: str = "/fhir") -> str:
    """A FHIR path with its ids taken out, for the access log (P-14): ``/fhir/Patient/{id}``,
    ``/fhir/Patient/{id}/_history/{vid}``, ``/fhir/Patient/{id}/$everything``, ``/fhir/_page``
    for a followed paging link (its token is the search), ``{?}`` for anything not a resource
    type, keyword or operation."""
    shape = [base]
    after = ""
    for segment in path[len(base) :].strip("/").split("/"):
        if not segment:
            continue
        if after == "" and segment == "_page":
            return f"{base}/_page"
        if after == "_history":
            segment = "{vid}"
        elif after in RESOURCE_TYPES and not segment.startswith(("$", "_")):
            segment = "{id}"
        elif len(segment) > 64 or not (
            segment in RESOURCE_TYPES or segment in _PATH_WORDS or segment[:1] == "$"
        ):
            segment = "{?}"
        shape.append(segment)
        after = segment
    return "/".join(shape)
