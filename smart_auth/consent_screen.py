"""What the authorization (consent) screen shows and what an approval grants (SMART 2.2 section
"Authorization" — the user decides; S-13, S-14; CONSENT.md C-05, C-26).

The screen speaks of kinds of data (lab results, vital signs, medicines...; see
``data/data-kinds.json``), never of scope codes: each requested resource scope is shown as the
kinds its resource types fall in, each kind a checkbox, ticked. Scopes that are plumbing
(``openid``, ``fhirUser``, ``launch``, ``launch/patient``...) are no checkboxes: they are granted as
asked and the screen says what they mean in one sentence. ``offline_access`` is the patient's
choice "keep access while I am not using the app". Sensitive categories (mental health, substance
use, sexual health, HIV, abuse) are shown apart and are off unless ticked: they become the
``securityLabel`` of the Consent, which is what releases sensitive data (C-26); scopes do not
carry them.

The granted scope is what the ticked kinds leave of the requested one, never more: a scope whose
kinds are all ticked is granted as asked; one with some kinds unticked becomes the scopes of the
ticked kinds' types (``patient/*.rs`` → ``patient/Condition.rs ...``), and a type that a kind
covers by category only (vital signs are Observations of category ``vital-signs``) becomes a
granular scope (``patient/Observation.rs?category=...|vital-signs``). A narrowed wildcard keeps
the types that hold no patient data (practitioners, organisations, medicines: the ``directory``
and ``products`` of ``consent/data/no-patient-data-types.json``) so that the app can still follow
references.

The access ends at the end (UTC) of the day the patient picks, counted from when the request
started, so the date shown is the date recorded.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from functools import cache
from importlib import resources
from typing import Any

import orjson

from consent.codes import load_json
from smart_auth.clients import purpose_codes
from smart_auth.scopes import IDENTITY_SCOPES, Context, ResourceScope, ScopeSet, parse_scope

EXPIRY_CHOICES: dict[str, timedelta] = {
    "1d": timedelta(days=1),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
    "1y": timedelta(days=365),
}
DEFAULT_EXPIRY = "90d"
_WRITE_LETTERS = frozenset({"c", "u", "d"})
_READ_LETTERS = frozenset({"r", "s"})


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of data, as the patient sees it."""

    id: str
    label: str
    plain: str
    types: frozenset[str]
    """Resource types it covers whole."""
    categories: Mapping[str, tuple[str, ...]]
    """Resource types it covers by category: type -> category codes."""

    def covers(self, resource_type: str) -> bool:
        return resource_type in self.types or resource_type in self.categories


@dataclass(frozen=True, slots=True)
class SensitiveCategory:
    """A category of sensitive data (C-26), shown apart and off unless ticked."""

    id: str
    label: str
    codes: tuple[str, ...]
    """The v3-ActCode sensitivity codes it stands for."""


@cache
def _data() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        resources.files("smart_auth").joinpath("data", "data-kinds.json").read_bytes()
    )
    return data


@cache
def kinds() -> tuple[Kind, ...]:
    """Every kind, in the order the pages show them; the last one is ``other``."""
    return tuple(
        Kind(
            item["id"],
            item["label"],
            item["plain"],
            frozenset(item.get("types", ())),
            {name: tuple(codes) for name, codes in item.get("categories", {}).items()},
        )
        for item in _data()["kinds"]
    )


@cache
def sensitive_categories() -> tuple[SensitiveCategory, ...]:
    return tuple(
        SensitiveCategory(item["id"], item["label"], tuple(item["codes"]))
        for item in _data()["sensitive"]
    )


@cache
def _reference_types() -> tuple[str, ...]:
    """Types without patient data an app needs to follow references (practitioners...)."""
    groups = load_json("no-patient-data-types.json")
    return (*groups["directory"], *groups["products"])


def _kinds_of_type(resource_type: str) -> tuple[Kind, ...]:
    return tuple(kind for kind in kinds() if kind.covers(resource_type)) or (kinds()[-1],)


def _category(restriction: tuple[tuple[str, str], ...]) -> str | None:
    """The category code of a restriction that is one ``category`` token, else ``None``."""
    if len(restriction) != 1 or restriction[0][0] != "category":
        return None
    return restriction[0][1].rpartition("|")[2]


def _kind_of_restricted(scope: ResourceScope) -> Kind:
    """A granular scope is in the kind its category names, else in its type's first kind."""
    code = _category(scope.restriction)
    for kind in _kinds_of_type(scope.resource_type):
        if code is not None and code in kind.categories.get(scope.resource_type, ()):
            return kind
    return _kinds_of_type(scope.resource_type)[0]


def _types_of_wildcard(compartment: Collection[str]) -> list[str]:
    named = {name for kind in kinds() for name in (*kind.types, *kind.categories)}
    return sorted(named | set(compartment))


def _pieces(scope: ResourceScope, compartment: Collection[str]) -> dict[str, list[ResourceScope]]:
    """The scope split by kind: kind id -> the narrower scopes that make up that kind's part."""
    if scope.restriction:
        return {_kind_of_restricted(scope).id: [scope]}
    wildcard = scope.resource_type == "*"
    types = _types_of_wildcard(compartment) if wildcard else [scope.resource_type]
    pieces: dict[str, list[ResourceScope]] = {}
    system = _data()["observation_categories"]
    for resource_type in types:
        for kind in _kinds_of_type(resource_type):
            if resource_type in kind.types or resource_type not in kind.categories:
                parts = [replace(scope, resource_type=resource_type)]
            else:
                parts = [
                    replace(
                        scope,
                        resource_type=resource_type,
                        restriction=(("category", f"{system}|{code}"),),
                        v1=False,
                    )
                    for code in kind.categories[resource_type]
                ]
            pieces.setdefault(kind.id, []).extend(parts)
    return pieces


def _shown(scope: ResourceScope) -> bool:
    """Backend (``system/``) scopes are not the user's to grant on this screen."""
    return scope.context is not Context.SYSTEM


@dataclass(frozen=True, slots=True)
class KindChoice:
    kind: Kind
    changes: bool
    """The app may also add, change or delete data of this kind."""


@dataclass(frozen=True, slots=True)
class Screen:
    kinds: tuple[KindChoice, ...]
    """The kinds of data asked for, in the order of ``data-kinds.json``."""
    purposes: tuple[str, ...]
    """Plain wording of the app's declared purposes."""
    identity: bool
    """``openid``, ``fhirUser`` or ``profile`` asked: the app learns who signed in."""
    offline: bool
    """``offline_access`` asked: the patient chooses whether the app keeps access."""


def screen(offered_scope: str, purposes: tuple[str, ...], compartment: Collection[str]) -> Screen:
    """What the screen shows for the scopes that may be granted (``compartment``: the types of
    the patient compartment, which a wildcard stands for)."""
    scopes = ScopeSet.parse(offered_scope)
    changes: dict[str, bool] = {}
    for scope in filter(_shown, scopes):
        for kind_id in _pieces(scope, compartment):
            changes[kind_id] = changes.get(kind_id, False) or bool(scope.letters & _WRITE_LETTERS)
    known = purpose_codes()
    return Screen(
        tuple(KindChoice(kind, changes[kind.id]) for kind in kinds() if kind.id in changes),
        tuple(known[p]["plain"] if p in known else p for p in purposes),
        bool(IDENTITY_SCOPES & scopes.other),
        "offline_access" in scopes.other,
    )


def granted_scope(
    offered_scope: str, ticked: Iterable[str], *, offline: bool, compartment: Collection[str]
) -> str:
    """What the ticked kinds (ids) leave of the offered scopes (see the module's docstring); the
    empty string when the request asked for data and no kind of it is ticked (a refusal)."""
    chosen = set(ticked)
    granted: list[str] = []
    asked_data = kept_data = False
    for item in dict.fromkeys(offered_scope.split()):
        scope = parse_scope(item)
        if scope is None:
            if item != "offline_access" or offline:
                granted.append(item)
            continue
        pieces = _pieces(scope, compartment) if _shown(scope) else {}
        asked_data = True
        if not _shown(scope) or set(pieces) <= chosen:
            granted.append(item)
            kept_data = True
            continue
        kept = [part for kind_id, parts in pieces.items() if kind_id in chosen for part in parts]
        if kept and scope.resource_type == "*" and scope.letters & _READ_LETTERS:
            reading = frozenset(scope.letters & _READ_LETTERS)
            kept += [
                ResourceScope(scope.context, name, reading, v1=False) for name in _reference_types()
            ]
        granted += [str(part) for part in kept]
        kept_data = kept_data or bool(kept)
    if asked_data and not kept_data:
        return ""
    return " ".join(dict.fromkeys(granted))


def sensitivity_labels(ticked: Iterable[str]) -> tuple[str, ...]:
    """The sensitivity codes of the ticked sensitive categories (ids), in the data's order."""
    chosen = set(ticked)
    return tuple(
        code
        for category in sensitive_categories()
        if category.id in chosen
        for code in category.codes
    )


def kinds_of(types: Collection[str], categories: Mapping[str, Collection[str]]) -> tuple[Kind, ...]:
    """The kinds a grant covers, wholly or in part: ``types`` granted whole (``*`` is all),
    ``categories`` the category codes granted of other types. Types without patient data make no
    kind."""
    if "*" in types:
        return kinds()
    found: list[Kind] = []
    reference = set(_reference_types())
    for kind in kinds():
        whole = kind.types & set(types) or set(kind.categories) & set(types)
        partial = any(
            set(codes) & {code.rpartition("|")[2] for code in categories.get(name, ())}
            for name, codes in kind.categories.items()
        )
        other = kind is kinds()[-1] and any(
            _kinds_of_type(name) == (kind,) and name not in reference for name in types
        )
        if whole or partial or other:
            found.append(kind)
    return tuple(found)


def sensitive_of(labels: Collection[str]) -> tuple[SensitiveCategory, ...]:
    """The sensitive categories whose codes a grant's labels name."""
    named = {label.upper() for label in labels}
    return tuple(c for c in sensitive_categories() if named & set(c.codes))


def expiry_end(started: datetime, choice: str) -> datetime:
    """The end of access for an expiry choice: the end (UTC) of the day it falls on."""
    day = (started + EXPIRY_CHOICES.get(choice, EXPIRY_CHOICES[DEFAULT_EXPIRY])).astimezone(UTC)
    return datetime.combine(day.date(), time(23, 59, 59), UTC)


@dataclass(frozen=True, slots=True)
class ConsentTerms:
    """What the Consent written on approval says (C-05)."""

    resource_types: tuple[str, ...]  # "*" when every type was granted
    granular_scopes: tuple[str, ...]
    labels: tuple[str, ...]
    """The sensitivity codes the patient ticked (C-26)."""
    start: datetime
    end: datetime


def consent_terms(
    scope: str, start: datetime, end: datetime, labels: tuple[str, ...] = ()
) -> ConsentTerms:
    """The resource types and granular scopes of the granted ``patient/`` and ``user/`` scopes."""
    granted = ScopeSet.parse(scope)
    whole = [s.resource_type for s in granted if not s.restriction and s.context != "system"]
    granular = [str(s) for s in granted if s.restriction]
    return ConsentTerms(
        tuple(dict.fromkeys(whole)), tuple(dict.fromkeys(granular)), labels, start, end
    )
