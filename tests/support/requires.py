"""What a test needs that a developer's machine may lack: skipped there, a failure in CI
(``.ci/run`` sets ``CI``), so that nothing in CI passes by not running."""

from __future__ import annotations

import os

import pytest


def require(present: bool, missing: str) -> None:
    """Skip the calling test when ``present`` is false, or fail it under CI."""
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"this test cannot run in CI: {missing}")
    pytest.skip(missing)
