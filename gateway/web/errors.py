"""Every error the FHIR side of the gateway answers on purpose, and the OperationOutcome it becomes.

::

    FhirError                      status  OperationOutcome issue code
     ├── BadRequest                  400   invalid
     ├── Unauthorized                401   login      (+ WWW-Authenticate: Bearer)
     ├── Forbidden                   403   forbidden
     ├── NotFound                    404   not-found
     ├── MethodNotAllowed            405   not-supported
     ├── NotAcceptable               406   not-supported
     ├── Conflict                    409   conflict
     ├── Gone                        410   deleted
     ├── PreconditionFailed          412   conflict
     ├── PayloadTooLarge             413   too-long
     ├── UriTooLong                  414   too-long
     ├── UnsupportedMediaType        415   not-supported
     ├── Unprocessable               422   processing
     ├── TooManyRequests             429   throttled  (+ Retry-After)
     ├── HeadersTooLarge             431   too-long
     ├── InternalError               500   exception
     ├── UpstreamUnavailable         502   transient
     ├── ServiceUnavailable          503   transient
     └── UpstreamTimeout             504   timeout

The diagnostics are written for the caller: they never carry a stack trace, an upstream host name or
an upstream 5xx body (P-14). The middleware in :mod:`gateway.web.middleware` is the one place that
renders them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson
from aiohttp import web

FHIR_JSON = "application/fhir+json"


def operation_outcome(
    diagnostics: str,
    *,
    code: str = "processing",
    severity: str = "error",
    extra_issues: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A FHIR R4 OperationOutcome with one issue, plus any extra issues given."""
    issue = {"severity": severity, "code": code, "diagnostics": diagnostics}
    return {"resourceType": "OperationOutcome", "issue": [issue, *extra_issues]}


class FhirError(Exception):
    """An error answered to the caller as an OperationOutcome with an HTTP status."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "exception"

    def __init__(
        self,
        diagnostics: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra_issues: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.headers: dict[str, str] = dict(headers or {})
        self.extra_issues = tuple(extra_issues)

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.diagnostics, code=self.code, extra_issues=self.extra_issues)


class BadRequest(FhirError):
    status = 400
    code = "invalid"


class Unauthorized(FhirError):
    status = 401
    code = "login"

    def __init__(self, diagnostics: str, *, error: str = "invalid_token") -> None:
        # RFC 6750 3: a request without credentials gets a bare challenge, a bad token its error.
        challenge = 'Bearer realm="fhir"' if not error else f'Bearer realm="fhir", error="{error}"'
        super().__init__(diagnostics, headers={"WWW-Authenticate": challenge})


class Forbidden(FhirError):
    status = 403
    code = "forbidden"


class NotFound(FhirError):
    status = 404
    code = "not-found"


class MethodNotAllowed(FhirError):
    status = 405
    code = "not-supported"


class NotAcceptable(FhirError):
    status = 406
    code = "not-supported"


class Conflict(FhirError):
    status = 409
    code = "conflict"


class Gone(FhirError):
    status = 410
    code = "deleted"


class PreconditionFailed(FhirError):
    status = 412
    code = "conflict"


class RequestTimeout(FhirError):
    status = 408
    code = "timeout"


class PayloadTooLarge(FhirError):
    status = 413
    code = "too-long"


class UriTooLong(FhirError):
    status = 414
    code = "too-long"


class UnsupportedMediaType(FhirError):
    status = 415
    code = "not-supported"


class Unprocessable(FhirError):
    status = 422
    code = "processing"


class TooManyRequests(FhirError):
    status = 429
    code = "throttled"

    def __init__(self, diagnostics: str, *, retry_after: int) -> None:
        super().__init__(diagnostics, headers={"Retry-After": str(retry_after)})


class HeadersTooLarge(FhirError):
    status = 431
    code = "too-long"


class InternalError(FhirError):
    status = 500
    code = "exception"


class UpstreamUnavailable(FhirError):
    status = 502
    code = "transient"


class ServiceUnavailable(FhirError):
    status = 503
    code = "transient"


class UpstreamTimeout(FhirError):
    status = 504
    code = "timeout"


_BY_STATUS: dict[int, type[FhirError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        NotAcceptable,
        Conflict,
        Gone,
        PreconditionFailed,
        PayloadTooLarge,
        UriTooLong,
        UnsupportedMediaType,
        Unprocessable,
        HeadersTooLarge,
        InternalError,
        UpstreamUnavailable,
        ServiceUnavailable,
        UpstreamTimeout,
    )
}


def error_for_status(status: int, diagnostics: str) -> FhirError:
    """The FhirError for an HTTP status raised elsewhere (aiohttp's own 404/405/413, say)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = BadRequest if 400 <= status < 500 else InternalError
    return cls(diagnostics)


def fhir_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    """A FHIR JSON response with the given bytes as body."""
    return web.Response(
        status=status, body=body, headers=headers, content_type=FHIR_JSON, charset="utf-8"
    )


def error_response(exc: FhirError) -> web.Response:
    return fhir_response(exc.status, orjson.dumps(exc.outcome()), exc.headers)
