"""The audit package's errors::

AuditError
 ├── AuditUnavailable   neither MongoDB nor the spool took the events: nothing may be released
 │                      (also a gateway.web.errors.ServiceUnavailable: answered 503 with an
 │                      OperationOutcome by the FHIR error middleware, A-08)
 ├── ChainInUse         another process writes this chain (the spool is locked, or MongoDB
 │                      holds records of this chain that this process did not write)
 └── SpoolCorrupt       a spooled record other than the last does not read back (the last
                        one may be torn by a crash: it was never acknowledged and is dropped)
"""

from __future__ import annotations

from gateway.web.errors import ServiceUnavailable


class AuditError(Exception):
    """Any failure of the audit log."""


class AuditUnavailable(AuditError, ServiceUnavailable):
    """The events could not be made durable: the response must not be sent (fail closed)."""

    def __init__(self, diagnostics: str = "") -> None:
        ServiceUnavailable.__init__(
            self,
            diagnostics
            or "the gateway cannot record this access right now, so nothing was released; "
            "try again shortly",
        )


class ChainInUse(AuditError):
    """Two writers on one chain would fork it."""


class SpoolCorrupt(AuditError):
    """The spool file cannot be read back."""
