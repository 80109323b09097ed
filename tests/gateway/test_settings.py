"""Settings: environment + TOML, a bad value stops start-up naming the setting."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.settings import SettingsError, load_key_provider, load_settings
from smart_auth.key_provider import LocalKeyProvider, version_of


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
        ({"FHIR_GATEWAY_KEY_ENCRYPTION_KEY": "c2hvcnQ="}, "FHIR_GATEWAY_KEY_ENCRYPTION_KEY"),
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


def test_p19_the_gateway_is_not_built_without_a_key_encryption_key() -> None:
    settings = load_settings(upstream_url="http://u.example/fhir", mongodb_uri="mongodb://db")
    with pytest.raises(SettingsError) as refused:
        create_app(settings)
    message = str(refused.value)
    assert "FHIR_GATEWAY_KEY_ENCRYPTION_KEY_FILE (TOML key 'key_encryption_key_file')" in message
    assert "FHIR_GATEWAY_KEY_ENCRYPTION_KEY (TOML key 'key_encryption_key')" in message


def test_p19_the_key_encryption_key_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY", base64.b64encode(key).decode())
    assert load_key_provider(load_settings()).current_version == version_of(key)
    monkeypatch.delenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY")
    path = tmp_path / "kek"
    path.write_bytes(key)
    monkeypatch.setenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY_FILE", str(path))
    assert load_key_provider(load_settings()).current_version == version_of(key)
    monkeypatch.setenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY", base64.b64encode(key).decode())
    with pytest.raises(SettingsError, match="not both"):
        load_settings()


@pytest.mark.parametrize(
    ("content", "says"), [(None, "cannot read"), (b"my secret passphrase", "not a key")]
)
def test_p19_a_bad_key_file_names_the_setting_not_the_key(
    content: bytes | None, says: str, tmp_path: Path
) -> None:
    path = tmp_path / "kek"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SettingsError, match="FHIR_GATEWAY_KEY_ENCRYPTION_KEY_FILE") as refused:
        load_key_provider(load_settings(key_encryption_key_file=path))
    assert says in str(refused.value) and "passphrase" not in str(refused.value)


def test_p19_a_bad_key_in_the_environment_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY", "my-secret-passphrase")
    with pytest.raises(SettingsError, match="FHIR_GATEWAY_KEY_ENCRYPTION_KEY") as refused:
        load_settings()
    assert "passphrase" not in str(refused.value)


async def test_p16_previous_key_encryption_keys_unwrap_and_never_wrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current, older, oldest = os.urandom(32), os.urandom(32), os.urandom(32)
    path = tmp_path / "oldest"
    path.write_text(base64.b64encode(oldest).decode())
    monkeypatch.setenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY", base64.b64encode(current).decode())
    monkeypatch.setenv(
        "FHIR_GATEWAY_PREVIOUS_KEY_ENCRYPTION_KEYS", base64.b64encode(older).decode()
    )
    monkeypatch.setenv("FHIR_GATEWAY_PREVIOUS_KEY_ENCRYPTION_KEY_FILES", str(path))
    provider = load_key_provider(load_settings())
    assert provider.current_version == version_of(current)
    for key in (older, oldest):
        wrapped = await LocalKeyProvider(key).wrap(b"k" * 32)
        assert await provider.unwrap(wrapped) == b"k" * 32
    assert (await provider.wrap(b"k" * 32)).version == version_of(current)


def test_p16_a_bad_previous_key_names_its_setting_not_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("FHIR_GATEWAY_PREVIOUS_KEY_ENCRYPTION_KEYS", "my-old-passphrase")
    with pytest.raises(SettingsError, match="PREVIOUS_KEY_ENCRYPTION_KEYS") as refused:
        load_settings()
    assert "passphrase" not in str(refused.value)
    monkeypatch.delenv("FHIR_GATEWAY_PREVIOUS_KEY_ENCRYPTION_KEYS")
    monkeypatch.setenv("FHIR_GATEWAY_PREVIOUS_KEY_ENCRYPTION_KEY_FILES", str(tmp_path / "none"))
    with pytest.raises(SettingsError, match=r"PREVIOUS_KEY_ENCRYPTION_KEY_FILES.*cannot read"):
        load_key_provider(load_settings())


def test_the_cache_settings_and_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.cache_enabled and settings.cache_ttl_seconds == 60
    monkeypatch.setenv("FHIR_GATEWAY_CACHE_ENABLED", "false")
    monkeypatch.setenv("FHIR_GATEWAY_CACHE_MAX_ENTRIES", "500")
    settings = load_settings()
    assert not settings.cache_enabled and settings.cache_max_entries == 500
    monkeypatch.setenv("FHIR_GATEWAY_CACHE_MAX_BYTES", "1000")
    with pytest.raises(SettingsError, match="FHIR_GATEWAY_CACHE_MAX_BYTES"):
        load_settings()


def test_audit_forwarding_is_off_by_default_and_takes_upstream_or_a_fhir_base() -> None:
    assert load_settings().audit_forward_url is None
    assert load_settings(audit_forward_url="upstream").audit_forward_url == "upstream"
    url = load_settings(audit_forward_url="https://audit.example/fhir/").audit_forward_url
    assert url == "https://audit.example/fhir"


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"audit_forward_url": "audit.example"}, "FHIR_GATEWAY_AUDIT_FORWARD_URL"),
        ({"audit_forward_url": "https://audit.example/fhir?x=1"}, "audit_forward_url"),
        (
            {"audit_forward_url": "upstream", "audit_forward_bearer_token": "t"},
            "upstream_auth settings are used",
        ),
        ({"audit_forward_bearer_token": "t"}, "audit_forward_bearer_token"),
        (
            {"audit_forward_backoff_seconds": 10, "audit_forward_backoff_max_seconds": 5},
            "audit_forward_backoff_max_seconds",
        ),
        ({"audit_forward_batch_size": 0}, "FHIR_GATEWAY_AUDIT_FORWARD_BATCH_SIZE"),
    ],
)
def test_bad_audit_forwarding_settings_stop_start_up_naming_the_setting(
    values: dict[str, object], says: str
) -> None:
    with pytest.raises(SettingsError, match=says):
        load_settings(**values)


@pytest.mark.parametrize(
    "secret",
    ["correct horse battery staple", "2026-12-01" * 4, "ab" * 32, "x" * 64],
)
def test_a_weak_paging_secret_stops_start_up_without_echoing_it(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paging links are encrypted under a key derived from ``paging_secret``: a word, a date or a
    repeated pattern could be guessed offline and links forged for any search."""
    monkeypatch.setenv("FHIR_GATEWAY_PAGING_SECRET", secret)
    with pytest.raises(SettingsError, match="FHIR_GATEWAY_PAGING_SECRET") as refused:
        load_settings()
    assert secret not in str(refused.value)


def test_a_random_paging_secret_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("FHIR_GATEWAY_PAGING_SECRET", secret)
    settings = load_settings()
    assert settings.paging_secret is not None
    assert settings.paging_secret.get_secret_value() == secret
