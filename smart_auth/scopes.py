"""SMART App Launch 2.2 scopes (section 3, "Scopes and Launch Context"; S-27 in SMART.md).

Grammar of a resource scope::

    (patient|user|system) "/" (ResourceType|"*") "."
        ( [c][r][u][d][s]                  v2: in this order, at least one letter
        | "read" | "write" | "*" )         v1
    [ "?" param=value ( "&" param=value )* ]   v2 granular restriction

v1 names map to v2 letters: ``read`` = ``rs``, ``write`` = ``cud``, ``*`` = ``cruds``. Other scopes
(``openid``, ``fhirUser``, ``launch``, ``launch/patient``, ``offline_access``...) are kept as plain
strings. A malformed resource scope is *refused* at the authorization step (:func:`parse_scope`
raises) and *ignored* at request time (:meth:`ScopeSet.parse` with ``strict=False`` drops it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal
from urllib.parse import parse_qsl

Letter = Literal["c", "r", "u", "d", "s"]
LETTERS: tuple[Letter, ...] = ("c", "r", "u", "d", "s")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_V1_NAMES = {letters: name for name, letters in _V1.items()}

_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{1,63})\.(?P<perm>[a-z*]+)"
    r"(?:\?(?P<query>.+))?$"
)
_LETTERS_IN_ORDER = re.compile(r"^c?r?u?d?s?$")

LAUNCH_SCOPES = frozenset({"launch", "launch/patient", "launch/encounter"})
IDENTITY_SCOPES = frozenset({"openid", "fhirUser", "profile"})
ACCESS_SCOPES = frozenset({"offline_access", "online_access"})
OTHER_SCOPES = LAUNCH_SCOPES | IDENTITY_SCOPES | ACCESS_SCOPES


class ScopeError(ValueError):
    """A scope string that is not valid SMART grammar."""


class Context(StrEnum):
    PATIENT = "patient"
    USER = "user"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One resource scope, normalised to v2 letters."""

    context: Context
    resource_type: str  # a FHIR type, or "*"
    letters: frozenset[Letter]
    restriction: tuple[tuple[str, str], ...] = ()
    v1: bool = False

    def covers_type(self, resource_type: str) -> bool:
        return self.resource_type in ("*", resource_type)

    def grants(self, resource_type: str, letter: Letter) -> bool:
        """This scope allows ``letter`` on ``resource_type`` (restriction aside)."""
        return letter in self.letters and self.covers_type(resource_type)

    def __str__(self) -> str:
        letters = "".join(x for x in LETTERS if x in self.letters)
        if self.v1:
            letters = _V1_NAMES.get(letters, letters)
        text = f"{self.context}/{self.resource_type}.{letters}"
        if self.restriction:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.restriction)
        return text

    def is_within(self, other: ResourceScope) -> bool:
        """True when everything this scope allows, ``other`` allows too (for refresh narrowing
        and for checking a request against a client's registered scopes)."""
        if self.context != other.context or not other.covers_type(self.resource_type):
            return False
        # A restricted scope covers only scopes at least as restricted (its conditions, maybe more).
        return self.letters <= other.letters and set(other.restriction) <= set(self.restriction)

    def intersection(self, other: ResourceScope) -> ResourceScope | None:
        """What this scope and ``other`` both allow, or ``None`` when nothing: a wildcard narrowed
        to the other's type, the letters both have, the conditions of both restrictions (for
        granting less than asked, RFC 6749 3.3). Stays v1 when this scope was v1 and the letters
        still have a v1 name."""
        if self.context != other.context:
            return None
        if self.resource_type == "*":
            resource_type = other.resource_type
        elif other.covers_type(self.resource_type):
            resource_type = self.resource_type
        else:
            return None
        letters = self.letters & other.letters
        if not letters:
            return None
        restriction = (
            *self.restriction,
            *(r for r in other.restriction if r not in self.restriction),
        )
        v1 = (
            self.v1 and not restriction and "".join(x for x in LETTERS if x in letters) in _V1_NAMES
        )
        return ResourceScope(self.context, resource_type, letters, restriction, v1)


def parse_scope(scope: str) -> ResourceScope | None:
    """Parse one scope: a :class:`ResourceScope`, ``None`` for a non-resource scope, or
    :class:`ScopeError` for a resource scope that breaks the grammar."""
    if "/" not in scope or scope in LAUNCH_SCOPES:
        return None
    match = _RESOURCE_SCOPE.match(scope)
    if match is None:
        raise ScopeError(f"'{scope}' is not a valid SMART resource scope")
    perm = match["perm"]
    v1 = perm in _V1
    letters = _V1[perm] if v1 else perm
    if not v1 and (not letters or not _LETTERS_IN_ORDER.match(letters)):
        raise ScopeError(
            f"'{scope}': permissions are letters c, r, u, d, s, each once, in that order"
        )
    restriction: tuple[tuple[str, str], ...] = ()
    if match["query"]:
        if v1:
            raise ScopeError(f"'{scope}': v1 scopes take no ?param=value restriction")
        try:
            restriction = tuple(
                parse_qsl(match["query"], keep_blank_values=False, strict_parsing=True)
            )
        except ValueError as exc:
            raise ScopeError(f"'{scope}': the restriction is not param=value[&...]") from exc
    return ResourceScope(
        Context(match["context"]),
        match["type"],
        frozenset(letters),  # type: ignore[arg-type]
        restriction,
        v1,
    )


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """Every scope of a token or request, split into resource scopes and the rest."""

    resource: tuple[ResourceScope, ...] = ()
    other: frozenset[str] = field(default_factory=frozenset)
    ignored: tuple[str, ...] = ()

    @classmethod
    def parse(cls, scope_string: str | Iterable[str], *, strict: bool = False) -> ScopeSet:
        """Parse a space-separated scope string. ``strict`` raises on the first malformed scope
        (authorization time); otherwise malformed scopes land in ``ignored`` (request time)."""
        items = scope_string.split() if isinstance(scope_string, str) else list(scope_string)
        resource: list[ResourceScope] = []
        other: set[str] = set()
        ignored: list[str] = []
        for item in dict.fromkeys(items):  # keep order, drop duplicates
            try:
                parsed = parse_scope(item)
            except ScopeError:
                if strict:
                    raise
                ignored.append(item)
                continue
            if parsed is None:
                other.add(item)
            else:
                resource.append(parsed)
        return cls(tuple(resource), frozenset(other), tuple(ignored))

    def __iter__(self) -> Iterator[ResourceScope]:
        return iter(self.resource)

    def __str__(self) -> str:
        return " ".join([*sorted(self.other), *(str(s) for s in self.resource)])

    def contexts(self) -> frozenset[Context]:
        return frozenset(s.context for s in self.resource)

    def matching(
        self, resource_type: str, letter: Letter, context: Context | None = None
    ) -> tuple[ResourceScope, ...]:
        """The scopes that allow ``letter`` on ``resource_type`` (in ``context`` if given)."""
        return tuple(
            s
            for s in self.resource
            if s.grants(resource_type, letter) and (context is None or s.context is context)
        )

    def allows(self, resource_type: str, letter: Letter, context: Context | None = None) -> bool:
        return bool(self.matching(resource_type, letter, context))

    def is_within(self, other: ScopeSet) -> bool:
        """Every scope here is covered by ``other`` (refresh may not widen, S-19)."""
        return self.other <= other.other and all(
            any(mine.is_within(theirs) for theirs in other.resource) for mine in self.resource
        )
