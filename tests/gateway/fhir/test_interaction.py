"""Parsing FHIR REST interactions, deny by default."""

from __future__ import annotations

import pytest

from gateway.fhir.interaction import Kind, parse
from gateway.web.errors import BadRequest, FhirError, MethodNotAllowed, NotFound


@pytest.mark.parametrize(
    ("method", "path", "kind", "upstream_path"),
    [
        ("GET", "", Kind.SEARCH_SYSTEM, ""),
        ("POST", "", Kind.BATCH, ""),
        ("GET", "metadata", Kind.CAPABILITIES, "metadata"),
        ("GET", "_history", Kind.HISTORY_SYSTEM, "_history"),
        ("GET", "Patient", Kind.SEARCH_TYPE, "Patient"),
        ("POST", "Patient", Kind.CREATE, "Patient"),
        ("POST", "Patient/_search", Kind.SEARCH_TYPE, "Patient/_search"),
        ("GET", "Patient/_history", Kind.HISTORY_TYPE, "Patient/_history"),
        ("GET", "Patient/p1", Kind.READ, "Patient/p1"),
        ("PUT", "Patient/p1", Kind.UPDATE, "Patient/p1"),
        ("PATCH", "Patient/p1", Kind.PATCH, "Patient/p1"),
        ("DELETE", "Patient/p1", Kind.DELETE, "Patient/p1"),
        ("GET", "Patient/p1/_history", Kind.HISTORY_INSTANCE, "Patient/p1/_history"),
        ("GET", "Patient/p1/_history/3", Kind.VREAD, "Patient/p1/_history/3"),
        ("GET", "Patient/p1/$everything", Kind.OPERATION, "Patient/p1/$everything"),
        ("GET", "Patient/p1/Observation", Kind.SEARCH_COMPARTMENT, "Patient/p1/Observation"),
        ("POST", "Observation/$validate", Kind.OPERATION, "Observation/$validate"),
    ],
)
def test_every_rest_interaction_is_recognised(
    method: str, path: str, kind: Kind, upstream_path: str
) -> None:
    interaction = parse(method, path)
    assert interaction.kind is kind
    assert interaction.upstream_path == upstream_path


def test_search_keeps_repeated_parameters_in_order_and_drops_format() -> None:
    query = [("code", "a"), ("_format", "json"), ("code", "b"), ("_count", "2")]
    interaction = parse("GET", "Observation", query)
    assert interaction.params == (("code", "a"), ("code", "b"), ("_count", "2"))


def test_post_search_merges_form_parameters() -> None:
    interaction = parse("POST", "Observation/_search", [("_count", "5")], [("code", "x")])
    assert interaction.form_post
    assert interaction.params == (("_count", "5"), ("code", "x"))


@pytest.mark.parametrize(
    ("method", "path", "error"),
    [
        ("GET", "NotAType", NotFound),
        ("GET", "Patient/p1/$graphql", NotFound),
        ("POST", "$graphql", NotFound),
        ("GET", "Patient/$export", NotFound),
        ("GET", "Patient/../Observation", BadRequest),
        ("GET", "Patient/./_history", BadRequest),
        ("GET", "Patient/a b", BadRequest),
        ("GET", "Patient/" + "x" * 65, BadRequest),
        ("GET", "Patient//Observation", BadRequest),
        ("GET", "Observation/o1/Patient", NotFound),
        ("GET", "Patient/p1/_history/1/extra", NotFound),
        ("PUT", "Patient", MethodNotAllowed),
        ("DELETE", "", MethodNotAllowed),
        ("GET", "Patient/p1/NotAType", NotFound),
        ("POST", "Patient/p1", MethodNotAllowed),
    ],
)
def test_anything_not_understood_is_refused(method: str, path: str, error: type[FhirError]) -> None:
    with pytest.raises(error):
        parse(method, path)
