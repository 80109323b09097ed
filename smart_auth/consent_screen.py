"""What the authorization (consent) screen shows and what an approval grants (SMART 2.2 section
"Authorization" — the user decides; S-13, S-14; CONSENT.md C-05).

The screen names the app, its registered URL and its declared purposes, and lists each requested
scope in plain words with a checkbox (all ticked); ``offline_access`` is spelled out. The user may
untick any scope and picks how long the access lasts. The granted scope is the ticked subset of the
requested one (never anything else), and the Consent written for it lists the granted resource
types, the granular scopes and the app's purposes, for the chosen period.

Plain words come from ``data/resource-words.json`` (our wording, sources named there).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

import orjson

from smart_auth.clients import purpose_codes
from smart_auth.scopes import Context, ResourceScope, ScopeSet, parse_scope

EXPIRY_CHOICES: dict[str, tuple[str, timedelta]] = {
    "1d": ("1 day", timedelta(days=1)),
    "30d": ("30 days", timedelta(days=30)),
    "90d": ("90 days", timedelta(days=90)),
    "1y": ("1 year", timedelta(days=365)),
}
DEFAULT_EXPIRY = "90d"


@cache
def _words() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        resources.files("smart_auth").joinpath("data", "resource-words.json").read_bytes()
    )
    return data


def _letters_in_words(scope: ResourceScope) -> str:
    names = [str(_words()["letters"][x]) for x in "cruds" if x in scope.letters]
    if len(names) > 1:
        return ", ".join(names[:-1]) + " and " + names[-1]
    return names[0]


def describe(scope: str) -> str:
    """One scope in plain words, e.g. ``read and search your vaccinations``."""
    parsed = parse_scope(scope)
    if parsed is None:
        return str(_words()["other"].get(scope, scope))
    what = str(_words()["types"].get(parsed.resource_type, f"{parsed.resource_type} records"))
    if parsed.context is Context.USER:
        what = what.replace("your ", "patients' ", 1)
        if parsed.resource_type == "*":
            what = "all health records you can see"
    elif parsed.context is Context.SYSTEM:
        what = what.replace("your ", "all patients' ", 1)
    text = f"{_letters_in_words(parsed)} {what}"
    if parsed.restriction:
        text += " — only where " + ", ".join(f"{k} is {v}" for k, v in parsed.restriction)
    return text[0].upper() + text[1:]


@dataclass(frozen=True, slots=True)
class ScopeChoice:
    scope: str
    words: str


@dataclass(frozen=True, slots=True)
class Screen:
    choices: tuple[ScopeChoice, ...]
    purposes: tuple[str, ...]  # plain wording of the app's declared purposes
    offline: bool  # offline_access asked: the page says so


def screen(requested_scope: str, purposes: tuple[str, ...]) -> Screen:
    scopes = list(dict.fromkeys(requested_scope.split()))
    known = purpose_codes()
    return Screen(
        tuple(ScopeChoice(s, describe(s)) for s in scopes),
        tuple(known[p]["plain"] if p in known else p for p in purposes),
        "offline_access" in scopes,
    )


def granted_scope(requested_scope: str, ticked: list[str]) -> str:
    """The ticked scopes, in request order; anything not requested is ignored."""
    chosen = set(ticked)
    return " ".join(s for s in dict.fromkeys(requested_scope.split()) if s in chosen)


@dataclass(frozen=True, slots=True)
class ConsentTerms:
    """What the Consent written on approval says (C-05)."""

    resource_types: tuple[str, ...]  # "*" when every type was granted
    granular_scopes: tuple[str, ...]
    start: datetime
    end: datetime


def consent_terms(scope: str, start: datetime, expiry: str) -> ConsentTerms:
    """The resource types and granular scopes of the granted ``patient/`` and ``user/`` scopes."""
    granted = ScopeSet.parse(scope)
    whole = [s.resource_type for s in granted if not s.restriction and s.context != "system"]
    granular = [str(s) for s in granted if s.restriction]
    period = EXPIRY_CHOICES.get(expiry, EXPIRY_CHOICES[DEFAULT_EXPIRY])[1]
    return ConsentTerms(
        tuple(dict.fromkeys(whole)), tuple(dict.fromkeys(granular)), start, start + period
    )
