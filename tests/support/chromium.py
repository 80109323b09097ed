"""Headless Chromium for the browser tests: Debian's package driven by Playwright (never
``playwright install``, which would download a browser build of its own)."""

from __future__ import annotations

import os
import shutil

from tests.support.requires import require

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    """Skip the test when the browser or Playwright is missing; in CI that is a failure."""
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = "Debian's chromium is not installed (scripts/test installs it when run as root)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "playwright for Python is not installed"
    require(missing is None, missing or "")
