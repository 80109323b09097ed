"""The time the authorization server's stores go by: the system's, unless one is injected (tests
move a clock forward instead of sleeping; ``ConsentStore`` takes the same)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Now, as an aware datetime."""


def system_clock() -> datetime:
    return datetime.now(UTC)
