"""The settings file of a running demo: ``fhir-gateway demo`` writes where its database, its FHIR
server and the gateway are (``.demo.env`` in the checkout's root, git-ignored) and removes the file
when it stops; the administration commands read it, so that ``fhir-gateway clients add`` and the
others act on the running demo without anyone looking up the database's random port.

The format is ``FHIR_GATEWAY_NAME='value'`` lines (shell quoting), so that a shell can also load it
(``set -a; . ./.demo.env; set +a``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
from pathlib import Path

from gateway.localstack import REPO_ROOT
from gateway.settings import ENV_PREFIX, Settings, SettingsError

DEMO_ENV = REPO_ROOT / ".demo.env"
_SHARED = (
    "mongodb_uri",
    "mongodb_database",
    "public_base_url",
    "upstream_url",
    "key_encryption_key_file",  # the administration commands open sealed secrets too (P-19)
)
_HEADER = (
    "# The running demo's settings, written by `fhir-gateway demo` and removed when it stops.\n"
    "# The administration commands (fhir-gateway clients, users, keys, patients, consent) read\n"
    "# this file when no MongoDB is configured, so they act on the demo.\n"
)


def demo_lines(settings: Settings) -> list[str]:
    """``NAME='value'`` for each setting the administration commands need."""
    return [
        f"{ENV_PREFIX}{name.upper()}={shlex.quote(str(getattr(settings, name)))}"
        for name in _SHARED
        if getattr(settings, name) is not None
    ]


def write(settings: Settings, path: Path = DEMO_ENV) -> str:
    """Write the settings file; returns its text (for :func:`remove`)."""
    text = _HEADER + "\n".join(demo_lines(settings)) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def remove(text: str, path: Path = DEMO_ENV) -> None:
    """Remove the settings file if it is still the one written (another demo may have replaced
    it since)."""
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            path.unlink()


def read(path: Path) -> dict[str, str]:
    """The settings of an env file, as setting names (``mongodb_uri``) → values; a name that is
    also in the environment is left out (the environment wins, as everywhere)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            (assignment,) = shlex.split(line)
        except ValueError:
            raise SettingsError(f"{path}, line {number}: expected NAME=value") from None
        name, sep, value = assignment.partition("=")
        if not sep or not name.startswith(ENV_PREFIX):
            raise SettingsError(f"{path}, line {number}: expected {ENV_PREFIX}NAME=value")
        if name not in os.environ:
            values[name.removeprefix(ENV_PREFIX).lower()] = value
    return values
