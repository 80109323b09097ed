"""Hash chains (A-07): what is hashed, and that a stored record hashes the same when read back."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import bson
import orjson
import pytest

from gateway.audit.chain import EMPTY, GENESIS, Chain, Head, canonical_bytes, link, record_hash
from tests.audit.samples import event


def test_a07_canonical_bytes_are_the_record_without_hash_with_sorted_keys() -> None:
    record = {"z": 1, "a": {"y": [1, "é"], "b": True}, "hash": "ignored"}
    assert canonical_bytes(record) == '{"a":{"b":true,"y":[1,"é"]},"z":1}'.encode()
    assert record_hash(record) == hashlib.sha256(canonical_bytes(record)).hexdigest()


def test_a07_the_first_record_links_to_genesis_and_each_next_to_the_one_before() -> None:
    chain = Chain("c1")
    first, second = chain.append([event(), event()])
    assert (first["seq"], first["prev"]) == (1, GENESIS)
    assert (second["seq"], second["prev"]) == (2, first["hash"])
    assert chain.head == Head(2, second["hash"])
    assert first["_id"] == first["event"]["id"]
    assert record_hash(first) == first["hash"]


def test_a07_search_fields_are_copied_from_the_event_and_hashed() -> None:
    record = link(event("pat-9"), "c1", EMPTY)
    assert record["patients"] == ["pat-9"]
    assert "urn:fhir-gateway:client|ward-app" in record["agents"]
    assert "Practitioner/prac-1" in record["agents"]
    assert (record["subtype"], record["action"], record["outcome"]) == ("read", "R", "0")
    changed = {**record, "patients": ["someone-else"]}
    assert record_hash(changed) != record["hash"]


def test_a07_a_record_hashes_the_same_after_a_round_trip_through_bson() -> None:
    record = link(event(), "c1", EMPTY)
    stored = bson.decode(bson.encode(record))
    assert record_hash(stored) == record["hash"]
    assert orjson.dumps(stored, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        record, option=orjson.OPT_SORT_KEYS
    )


def test_a07_values_that_would_not_come_back_unchanged_are_refused() -> None:
    with pytest.raises(TypeError):
        link({**event(), "recorded": datetime.now(UTC)}, "c1", EMPTY)
