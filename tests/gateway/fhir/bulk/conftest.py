"""A MongoDB database of its own per test (the cache tests' fixture)."""

from tests.gateway.cache.conftest import db

__all__ = ["db"]
