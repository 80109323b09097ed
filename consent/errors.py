"""Every error the consent package raises on purpose.

::

    ConsentError
     ├── ConsentInvalid        a Consent breaks an R4 or gateway rule (the gateway answers 422)
     ├── InvalidParameter      a value that would reach MongoDB is not of the expected form (400)
     ├── ConsentNotFound       no Consent with that id or version (404)
     │    └── ConsentDeleted   the Consent existed and was deleted (410)
     ├── VersionConflict       the version a change was based on is no longer current (409/412)
     ├── ChangeNotAllowed      this writer may not make this change to a Consent (403, C-23)
     ├── UnknownPurpose        no minimisation profile for a purpose of use (a configuration error)
     └── Unreleasable          minimisation cannot release a resource for a purpose (it is withheld)

The gateway renders them as an OperationOutcome in its one error middleware; this package never
imports the web framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar


class ConsentError(Exception):
    """Base class of the errors this package raises. ``status`` is the HTTP status the gateway
    answers it with, whatever the surface (the FHIR API, the admin API): the one mapping."""

    status: ClassVar[int] = 400


@dataclass(frozen=True, slots=True)
class Issue:
    """One reason a Consent was refused: the rule it breaks and the element (FHIRPath) concerned.

    ``rule`` is an R4 invariant key (``ppc-1``, ``ppc-2``, ``per-1``), ``structure`` for a
    fhir.resources (R4B model) validation failure, or one of this gateway's own rules (``gw-*``,
    listed in :mod:`consent.model`).
    """

    rule: str
    expression: str
    message: str

    def as_issue(self) -> dict[str, object]:
        """An OperationOutcome.issue for this problem."""
        return {
            "severity": "error",
            "code": "invariant" if self.rule != "structure" else "structure",
            "diagnostics": f"{self.rule}: {self.message}",
            "expression": [self.expression],
        }


class ConsentInvalid(ConsentError):
    """A Consent that must not be stored; ``issues`` lists every problem found."""

    status = 422

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(f"{i.rule} at {i.expression}: {i.message}" for i in issues))


class InvalidParameter(ConsentError, ValueError):
    """A value meant for a query or a stored field has the wrong form (never reaches MongoDB)."""


class ConsentNotFound(ConsentError):
    """No Consent (or no such version of it)."""

    status = 404


class ConsentDeleted(ConsentNotFound):
    """The Consent was deleted; its history remains readable."""

    status = 410


class VersionConflict(ConsentError):
    """The Consent changed since the version the caller read (412 when the caller named the
    version with ``If-Match``)."""

    status = 409


class ChangeNotAllowed(ConsentError):
    """The writer (an app) may not make this change to a Consent (C-23); the message says why."""

    status = 403


class UnknownPurpose(ConsentError, KeyError):
    """A purpose of use has no minimisation profile."""

    status = 500


class Unreleasable(ConsentError):
    """A resource that a purpose's minimisation profile cannot release: de-identification would
    have to drop a modifier extension, which FHIR forbids (CONSENT.md C-28). The gateway
    withholds the resource and names this reason."""
