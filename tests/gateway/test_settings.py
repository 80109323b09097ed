"""Settings: environment + TOML, a bad value stops start-up naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import SettingsError, load_settings


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('port = 9000\nupstream_url = "http://file.example/fhir"\n')
    monkeypatch.setenv("FHIR_GATEWAY_UPSTREAM_URL", "http://env.example/fhir/")
    settings = load_settings(config)
    assert settings.port == 9000
    assert settings.upstream_url == "http://env.example/fhir"


def test_mongodb_uri_is_read_from_the_conventional_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://db.example:27017")
    assert load_settings().mongodb_uri == "mongodb://db.example:27017"


def test_list_settings_take_comma_separated_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FHIR_GATEWAY_UPSTREAM_ALIASES", "http://a.example/fhir, http://b.example/R4/"
    )
    assert load_settings().upstream_aliases == ["http://a.example/fhir", "http://b.example/R4"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FHIR_GATEWAY_PORT": "eighty"}, "FHIR_GATEWAY_PORT"),
        ({"FHIR_GATEWAY_PUBLIC_BASE_URL": "ftp://x"}, "FHIR_GATEWAY_PUBLIC_BASE_URL"),
        ({"FHIR_GATEWAY_UPSTREAM_URL": "http://u/fhir?x=1"}, "FHIR_GATEWAY_UPSTREAM_URL"),
        ({"FHIR_GATEWAY_UPSTREAM_AUTH": "bearer"}, "upstream_bearer_token"),
        ({"FHIR_GATEWAY_MAX_BODY_BYTES": "10"}, "FHIR_GATEWAY_MAX_BODY_BYTES"),
        ({"FHIR_GATEWAY_LOG_LEVEL": "LOUD"}, "FHIR_GATEWAY_LOG_LEVEL"),
    ],
)
def test_a_bad_value_names_the_setting(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("prot = 9000\n")
    with pytest.raises(SettingsError, match="prot"):
        load_settings(config)


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("port = = 1\n")
    with pytest.raises(SettingsError, match="not TOML"):
        load_settings(config)
