"""Hypothesis strategies for crafted JSON (SECURITY.md P-22; CONSENT.md C-26): request bodies an
attacker writes and upstream resources a broken server sends. Operators as keys and values
(``{"$ne": null}``), every JSON type where another is expected, huge and odd numbers, deep nesting,
long strings, and valid Consents or fixture resources with one part replaced by any of these."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

OPERATORS = ("$ne", "$in", "$gt", "$where", "$regex", "$exists", "$or", "$expr")
FHIR_KEYS = (
    "resourceType",
    "id",
    "status",
    "type",
    "provision",
    "coding",
    "code",
    "system",
    "display",
    "reference",
    "meta",
    "security",
    "contained",
    "data",
    "meaning",
    "actor",
    "period",
    "start",
    "end",
    "securityLabel",
    "class",
    "purpose",
    "valueCodeableConcept",
    "extension",
    "modifierExtension",
    "url",
    "text",
    "div",
)
WORDS = (
    "permit",
    "deny",
    "active",
    "Patient/pat-1",
    "Consent",
    "Observation",
    "PSY",
    "R",
    "",
    "0001-01-01T00:00:00+05:00",  # a dateTime whose UTC instant is before year 1
    "9999-12-31T23:59:59-05:00",
    "NotAType",
    "MedicinalProduct",  # an R4 type the R4B models lack
)

scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([10**30, -(10**30), 1e308, -1e308, 5e-324, 0.0, -0.0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from((*OPERATORS, *WORDS)),
)
keys: st.SearchStrategy[str] = st.one_of(
    st.text(max_size=8), st.sampled_from(OPERATORS), st.sampled_from(FHIR_KEYS)
)


def _nested(depth: int) -> Any:
    value: Any = {"url": "http://example.org/x"}
    for level in range(depth):
        value = [value] if level % 2 else {"extension": value}
    return value


json_values: st.SearchStrategy[Any] = st.one_of(
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=20,
    ),
    st.integers(min_value=30, max_value=1000).map(_nested),
    st.sampled_from(["x" * 2_000_000, ["y"] * 20_000, {"$ne": None}, {"$in": ["permit"]}]),
    st.lists(
        st.fixed_dictionaries({"resourceType": st.sampled_from(WORDS)}), min_size=1, max_size=2
    ),
)
"""Any JSON value, odd ones weighed in."""


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indexes)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value.get(head), rest, new)}
    copy = list(value)
    copy[head] = _replaced(value[head], rest, new)
    return copy


@st.composite
def _mutation(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one to three of its parts replaced by crafted JSON, or keys added."""
    value = base
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in _paths(value) if p]
        path = draw(st.sampled_from(paths))
        if draw(st.booleans()):
            value = _replaced(value, path, draw(json_values))
        else:  # add a key next to the chosen part, where the part is an object
            parent = path[:-1]
            node = value
            for step in parent:
                node = node[step]
            if isinstance(node, dict):
                value = _replaced(value, (*parent, draw(keys)), draw(json_values))
    return value


def mutations(bases: list[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """One of ``bases`` with crafted parts."""
    return st.sampled_from(bases).flatmap(_mutation)


def resources_like(
    bases: list[dict[str, Any]], resource_types: list[str]
) -> st.SearchStrategy[Any]:
    """Resources as a broken upstream might send them: real ones with crafted parts, and objects
    of any shape that claim a resource type."""
    return st.one_of(
        mutations(bases),
        st.builds(
            lambda rtype, body: {**body, "resourceType": rtype},
            st.sampled_from(resource_types),
            st.dictionaries(keys, json_values, max_size=6),
        ),
    )
