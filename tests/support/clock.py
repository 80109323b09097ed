"""A clock that tests move forward instead of sleeping (injected into the authorization server's
stores through ``create_app(..., clock=...)``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class MovableClock:
    """The real time plus however far a test has moved it."""

    def __init__(self) -> None:
        self._ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self._ahead

    def advance(self, seconds: float) -> None:
        self._ahead += timedelta(seconds=seconds)
