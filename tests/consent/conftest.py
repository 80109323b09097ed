"""Fixture data for the consent tests: the synthetic patients of ``fixtures/data``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson

SEED = Path(__file__).resolve().parents[2] / "fixtures" / "data"
SENSITIVE_PATIENT = "pat-samuel-reed"


@cache
def _seed(name: str) -> tuple[dict[str, Any], ...]:
    bundle = orjson.loads((SEED / name).read_bytes())
    return tuple(entry["resource"] for entry in bundle["entry"])


def seed_resources(name: str = "14-patient-samuel-reed.json") -> list[dict[str, Any]]:
    """Fresh copies of the resources of one fixture bundle."""
    return orjson.loads(orjson.dumps(_seed(name)))  # type: ignore[no-any-return]


def seed_resource(resource_type: str, resource_id: str | None = None) -> dict[str, Any]:
    """The first resource of a type (or the one with that id) of the sensitive patient."""
    return next(
        r
        for r in seed_resources()
        if r["resourceType"] == resource_type and resource_id in (None, r["id"])
    )
