"""The running demo's settings file and how the administration commands read it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli import admin as admin_cli
from gateway.cli import demo_env
from gateway.settings import Settings, SettingsError, load_settings

URI = "mongodb://127.0.0.1:40111/?directConnection=true&retryWrites=false"


def _demo_settings() -> Settings:
    return load_settings(
        mongodb_uri=URI,
        public_base_url="http://127.0.0.1:9000",
        upstream_url="http://127.0.0.1:9001/fhir",
    )


def _args(env_file: Path | None = None) -> argparse.Namespace:
    return argparse.Namespace(config=None, env_file=env_file)


@pytest.fixture
def no_mongodb_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MONGODB_URI", "FHIR_GATEWAY_MONGODB_URI", "FHIR_GATEWAY_PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_the_file_round_trips_and_is_removed_only_if_unchanged(
    tmp_path: Path, no_mongodb_configured: None
) -> None:
    path = tmp_path / ".demo.env"
    text = demo_env.write(_demo_settings(), path)
    values = demo_env.read(path)
    assert values["mongodb_uri"] == URI  # the & survives the shell quoting
    assert values["public_base_url"] == "http://127.0.0.1:9000"
    path.write_text(text + "# another demo wrote this\n")
    demo_env.remove(text, path)
    assert path.exists()
    path.write_text(text)
    demo_env.remove(text, path)
    assert not path.exists()


def test_the_environment_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_mongodb_configured: None
) -> None:
    path = tmp_path / ".demo.env"
    demo_env.write(_demo_settings(), path)
    monkeypatch.setenv("FHIR_GATEWAY_PUBLIC_BASE_URL", "https://gateway.example")
    assert "public_base_url" not in demo_env.read(path)
    settings = admin_cli._settings(_args(path))
    assert settings.public_base_url == "https://gateway.example"
    assert settings.mongodb_uri == URI


def test_without_mongodb_settings_the_commands_use_the_running_demos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_mongodb_configured: None
) -> None:
    monkeypatch.setattr(demo_env, "DEMO_ENV", tmp_path / ".demo.env")
    assert admin_cli._settings(_args()).mongodb_uri is None  # no demo running
    demo_env.write(_demo_settings(), demo_env.DEMO_ENV)
    assert admin_cli._settings(_args()).mongodb_uri == URI
    monkeypatch.setenv("MONGODB_URI", "mongodb://db.example:27017")
    assert admin_cli._settings(_args()).mongodb_uri == "mongodb://db.example:27017"


def test_a_malformed_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.env"
    path.write_text("# comment\nFHIR_GATEWAY_PORT=1\nOTHER=2\n")
    with pytest.raises(SettingsError, match="line 3"):
        demo_env.read(path)
