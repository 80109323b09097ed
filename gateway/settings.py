"""The gateway's settings: one typed object, read from ``FHIR_GATEWAY_*`` environment variables and
an optional TOML file (environment wins over the file, the file over the defaults).

A bad value stops start-up with a :class:`SettingsError` that names the setting, both as the
environment variable and as the TOML key, so an operator can find it in either place.

:func:`load_key_provider` turns the key-encryption key settings into the key provider that seals
the secrets kept in MongoDB (P-19); the gateway does not start without one.
"""

from __future__ import annotations

import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from yarl import URL

from smart_auth.key_provider import LocalKeyProvider, parse_key, read_key_file

ENV_PREFIX = "FHIR_GATEWAY_"

_toml_values: ContextVar[dict[str, Any] | None] = ContextVar("_toml_values", default=None)


class SettingsError(Exception):
    """Raised when the settings cannot be loaded; the message names the offending setting."""


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file's values, already read by :func:`load_settings`."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_toml_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_values.get() or {})


def _split_list(value: object) -> object:
    """Accept ``a,b`` as well as a TOML/JSON list for list settings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _http_base(value: str, name: str) -> str:
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{name} must be an absolute http(s) URL")
    if url.query_string or url.fragment:
        raise ValueError(f"{name} must not have a query or fragment")
    return str(url).rstrip("/")


class ExternalIssuer(BaseModel):
    """An authorization server (a hospital's Keycloak, say) whose tokens the FHIR API accepts
    (S-30). Its tokens must carry the gateway's FHIR base as ``aud``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str
    jwks_uri: str

    @field_validator("issuer", "jwks_uri")
    @classmethod
    def _absolute(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http(s) URL")
        return value


class Settings(BaseSettings):
    """Every setting of the gateway. Field names are the TOML keys; ``FHIR_GATEWAY_`` + the
    upper-cased name is the environment variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, populate_by_name=True
    )

    # --- where the gateway listens and how callers reach it
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_base_url: str = Field(
        default="http://127.0.0.1:8080",
        description="The gateway's public origin as callers see it; the FHIR base is this + /fhir.",
    )
    tls_cert_file: FilePath | None = Field(
        default=None,
        description="Certificate chain (PEM) for serving https itself (P-01); with tls_key_file.",
    )
    tls_key_file: FilePath | None = Field(default=None, description="Its private key (PEM).")
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="Addresses (CIDRs) of reverse proxies whose X-Forwarded-For, -Proto and -Host "
        "headers are believed; from anyone else they are ignored.",
    )
    header_read_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A request's line and headers must arrive within this time of their first "
        "byte; a client that trickles them is disconnected.",
    )
    body_idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="A request body from which nothing arrives for this long (a client that "
        "stops sending, or trickles) is answered 408 and its connection closed.",
    )

    # --- the upstream FHIR server
    upstream_url: str | None = Field(default=None, description="The upstream FHIR base URL.")
    upstream_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Other base URLs the upstream writes into its responses (rewritten too).",
    )
    upstream_auth: Literal["none", "bearer", "basic", "client_credentials"] = "none"
    upstream_bearer_token: SecretStr | None = None
    upstream_username: str | None = None
    upstream_password: SecretStr | None = None
    upstream_oauth_token_url: str | None = Field(
        default=None, description="The upstream's token endpoint (client_credentials)."
    )
    upstream_oauth_client_id: str | None = None
    upstream_oauth_client_secret: SecretStr | None = Field(
        default=None, description="Client secret (client_secret_basic); or a private key file."
    )
    upstream_oauth_private_key_file: FilePath | None = Field(
        default=None, description="Private key (PEM or JWK) signing private_key_jwt assertions."
    )
    upstream_oauth_key_id: str | None = Field(
        default=None, description="The assertion's kid (default: the key's RFC 7638 thumbprint)."
    )
    upstream_oauth_scope: str | None = None
    upstream_timeout_seconds: float = Field(default=30.0, gt=0)
    upstream_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    upstream_max_connections: int = Field(default=100, ge=1)
    upstream_verify_tls: bool = True
    upstream_ca_file: Path | None = None
    upstream_client_cert_file: Path | None = None
    upstream_client_key_file: Path | None = None

    # --- MongoDB
    mongodb_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices(f"{ENV_PREFIX}MONGODB_URI", "MONGODB_URI", "mongodb_uri"),
    )
    mongodb_database: str = Field(default="fhir_gateway", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    mongodb_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Client-side limit on each MongoDB operation (PyMongo's timeoutMS); a request "
        "whose database work does not finish in time is refused with 503.",
    )
    mongodb_server_selection_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="While MongoDB is unreachable, how long a request waits for it before its "
        "503 (gateway.web.database); also the driver's serverSelectionTimeoutMS.",
    )
    mongodb_max_idle_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Pooled MongoDB connections unused this long are closed by the gateway, before "
        "a server or a network device in between drops them.",
    )

    # --- secrets at rest (P-19): one of the two is required to serve
    key_encryption_key_file: Path | None = Field(
        default=None,
        description="A file holding the key-encryption key: 32 random bytes, raw or base64.",
    )
    key_encryption_key: SecretStr | None = Field(
        default=None, description="The key-encryption key itself: 32 random bytes in base64."
    )
    previous_key_encryption_key_files: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Earlier key-encryption keys, still opened but never used to wrap (P-16).",
    )
    previous_key_encryption_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Earlier key-encryption keys themselves, in base64 (comma-separated).",
    )

    # --- the encrypted cache of upstream reads (P-15, C-10, C-13, C-22)
    cache_enabled: bool = Field(
        default=True, description="Serve reads by id and vreads from the encrypted cache."
    )
    cache_ttl_seconds: int = Field(
        default=60,
        ge=0,
        le=86400,
        description="A cached resource is served without asking the upstream this long after it "
        "was fetched or revalidated.",
    )
    cache_revalidate_seconds: int = Field(
        default=3600,
        ge=0,
        description="After its TTL, an entry is kept this long to be revalidated with its ETag.",
    )
    cache_max_entries: int = Field(default=100_000, ge=1)
    cache_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    cache_key_memory_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="How long an instance keeps an unwrapped data key in memory.",
    )

    # --- bulk export (FHIR Bulk Data Access IG v2.0; gateway.fhir.bulk)
    export_enabled: bool = Field(
        default=True,
        description="Offer $export to backend-services tokens and run export jobs on this "
        "instance.",
    )
    export_file_lifetime_seconds: int = Field(
        default=3600,
        ge=60,
        le=30 * 86400,
        description="How long a finished export's files can be downloaded before they are deleted.",
    )
    export_page_size: int = Field(
        default=200, ge=1, le=1000, description="_count of each search an export pages through."
    )
    export_lease_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="How long an instance holds an export job without progress before another "
        "may take it over.",
    )
    export_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How often an idle instance looks for export jobs to run; also the "
        "Retry-After of a running export's status.",
    )

    # --- request limits (P-12)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_upstream_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest answer read from the FHIR server (502 above; a search should page).",
    )
    max_batch_entries: int = Field(
        default=200, ge=1, le=10_000, description="Most entries of a batch or transaction (413)."
    )
    batch_concurrency: int = Field(
        default=4, ge=1, le=64, description="Entries of one batch sent upstream at the same time."
    )
    max_url_bytes: int = Field(default=8192, ge=256)
    max_header_count: int = Field(default=100, ge=10)
    max_header_bytes: int = Field(default=16384, ge=1024)

    # --- the SMART authorization server (SMART.md S-12, S-16, S-21, S-32; SECURITY.md P-04 .. P-06)
    access_token_lifetime_seconds: int = Field(default=3600, ge=60, le=3600)
    backend_token_lifetime_seconds: int = Field(default=300, ge=30, le=300)
    authorization_code_lifetime_seconds: int = Field(default=60, ge=5, le=60)
    refresh_token_idle_seconds: int = Field(
        default=30 * 86400, ge=60, description="A refresh token unused this long expires (S-32)."
    )
    refresh_token_max_seconds: int = Field(
        default=365 * 86400, ge=60, description="No token family outlives this, whatever is picked."
    )
    session_idle_seconds: int = Field(default=15 * 60, ge=1)
    session_absolute_seconds: int = Field(default=12 * 3600, ge=1)
    session_cookie_secure: bool | None = Field(
        default=None, description="Secure cookies; unset = on whenever public_base_url is https."
    )
    mfa_required_for_patients: bool = False
    signing_key_rotation_days: int = Field(default=30, ge=1)
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed logins per account or address before a lock."
    )
    login_lock_seconds: int = Field(
        default=60, ge=1, description="The first lock; each further failure doubles it."
    )
    launch_context_lifetime_seconds: int = Field(default=300, ge=10, le=3600)
    client_jwks_max_cache_seconds: int = Field(default=3600, ge=0)

    # --- the FHIR API's access control (SMART resource server, S-26 … S-30, P-12)
    external_issuers: list[ExternalIssuer] = Field(
        default_factory=list,
        description="Other authorization servers whose access tokens the FHIR API accepts.",
    )
    page_link_lifetime_seconds: int = Field(default=3600, ge=10)
    paging_secret: SecretStr | None = Field(
        default=None,
        description="The secret paging links are encrypted under (default: generated once, kept "
        "in MongoDB sealed by the key-encryption key).",
    )
    rate_limit_per_client: str = Field(
        default="1200/minute",
        pattern=r"^\d+\s*/\s*(second|minute|hour)$",
        description="Per-client request limit on the FHIR API, across all instances (429 above).",
    )
    jwks_refresh_min_seconds: float = Field(default=30.0, ge=0)
    representation_check_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="How old a check that a parent still represents a child may be (C-25).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that /metrics requires; without one /metrics is not served.",
    )

    # --- the audit log (AUDIT.md A-07 … A-13)
    audit_chain_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._:@-]{1,100}$",
        description="This instance's audit chain; unique per running instance, stable across its "
        "restarts (default: host name and port).",
    )
    audit_spool_dir: Path = Field(
        default=Path("audit-spool"),
        description="Local directory where audit events wait, fsynced, while MongoDB is down.",
    )
    audit_write_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    audit_checkpoint_events: int = Field(default=1000, ge=1)
    audit_checkpoint_seconds: float = Field(default=300.0, gt=0)
    audit_retention_days: int = Field(default=2192, ge=1)

    # --- forwarding the audit log to an audit repository (off by default)
    audit_forward_url: str | None = Field(
        default=None,
        description="Where stored AuditEvents are sent (PUT [base]/AuditEvent/[id]): 'upstream' "
        "(the upstream FHIR server, with its credentials and TLS settings) or a FHIR base URL; "
        "unset: not forwarded.",
    )
    audit_forward_bearer_token: SecretStr | None = Field(
        default=None,
        description="Bearer token sent to a forward URL (not with 'upstream', which uses the "
        "upstream_auth settings); unset: no Authorization header.",
    )
    audit_forward_batch_size: int = Field(
        default=100, ge=1, le=1000, description="Events read and sent per chain per round."
    )
    audit_forward_poll_seconds: float = Field(
        default=1.0, gt=0, le=300, description="How often the forwarder looks for new events."
    )
    audit_forward_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="Time one PUT to the audit repository may take."
    )
    audit_forward_backoff_seconds: float = Field(
        default=1.0, gt=0, description="The first wait after the repository failed; doubles."
    )
    audit_forward_backoff_max_seconds: float = Field(
        default=60.0, gt=0, description="The longest wait between attempts."
    )
    audit_forward_lease_seconds: float = Field(
        default=30.0,
        ge=1,
        description="How long an instance holds a chain's forwarding without renewing it.",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator(
        "upstream_aliases",
        "trusted_proxies",
        "previous_key_encryption_key_files",
        "previous_key_encryption_keys",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("public_base_url")
    @classmethod
    def _public_base(cls, value: str) -> str:
        return _http_base(value, "public_base_url")

    @field_validator("upstream_url")
    @classmethod
    def _upstream(cls, value: str | None) -> str | None:
        return None if value is None else _http_base(value, "upstream_url")

    @field_validator("upstream_oauth_token_url")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_base(value, "upstream_oauth_token_url")

    @field_validator("upstream_aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        return [_http_base(v, "upstream_aliases") for v in value]

    @field_validator("audit_forward_url")
    @classmethod
    def _forward_url(cls, value: str | None) -> str | None:
        if value is None or value == "upstream":
            return value
        return _http_base(value, "audit_forward_url ('upstream' or a FHIR base URL)")

    @model_validator(mode="after")
    def _forwarding(self) -> Settings:
        if self.audit_forward_bearer_token is not None and self.audit_forward_url in (
            None,
            "upstream",
        ):
            raise ValueError(
                "audit_forward_bearer_token is for an audit_forward_url that is a FHIR base URL; "
                "with 'upstream' the upstream_auth settings are used"
            )
        if self.audit_forward_backoff_seconds > self.audit_forward_backoff_max_seconds:
            raise ValueError(
                "audit_forward_backoff_seconds must not exceed audit_forward_backoff_max_seconds"
            )
        return self

    @field_validator("paging_secret")
    @classmethod
    def _paging_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # At least 32 characters, 16 of them different: what a random value of that length has
        # (openssl rand -base64 32) and a word, a date or a repeated pattern has not.
        text = "" if value is None else value.get_secret_value()
        if value is not None and (len(text) < 32 or len(set(text)) < 16):
            raise ValueError(
                "paging_secret is too weak to encrypt paging links: use at least 32 random "
                "characters (openssl rand -base64 32), or leave it unset for a generated one"
            )
        return value

    @field_validator("key_encryption_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_key(value.get_secret_value().encode())  # raises ValueError, never echoing it
        return value

    @field_validator("previous_key_encryption_keys")
    @classmethod
    def _previous_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            parse_key(key.get_secret_value().encode())  # raises ValueError, never echoing it
        return value

    @model_validator(mode="after")
    def _one_key(self) -> Settings:
        if self.key_encryption_key_file is not None and self.key_encryption_key is not None:
            raise ValueError("set key_encryption_key_file or key_encryption_key, not both")
        return self

    @model_validator(mode="after")
    def _credentials(self) -> Settings:
        if self.upstream_auth == "bearer" and self.upstream_bearer_token is None:
            raise ValueError("upstream_auth = bearer needs upstream_bearer_token")
        if self.upstream_auth == "basic" and (
            self.upstream_username is None or self.upstream_password is None
        ):
            raise ValueError("upstream_auth = basic needs upstream_username and upstream_password")
        if (self.upstream_client_cert_file is None) != (self.upstream_client_key_file is None):
            raise ValueError("upstream_client_cert_file and upstream_client_key_file go together")
        if self.upstream_auth == "client_credentials":
            if not self.upstream_oauth_token_url or not self.upstream_oauth_client_id:
                raise ValueError(
                    "upstream_auth = client_credentials needs upstream_oauth_token_url and "
                    "upstream_oauth_client_id"
                )
            if (self.upstream_oauth_client_secret is None) == (
                self.upstream_oauth_private_key_file is None
            ):
                raise ValueError(
                    "upstream_auth = client_credentials needs upstream_oauth_client_secret or "
                    "upstream_oauth_private_key_file (one of them)"
                )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @model_validator(mode="after")
    def _session_times(self) -> Settings:
        if self.session_idle_seconds > self.session_absolute_seconds:
            raise ValueError("session_idle_seconds must not exceed session_absolute_seconds")
        if self.refresh_token_idle_seconds > self.refresh_token_max_seconds:
            raise ValueError("refresh_token_idle_seconds must not exceed refresh_token_max_seconds")
        return self

    @property
    def cookies_secure(self) -> bool:
        """Whether session cookies carry ``Secure`` (P-06)."""
        if self.session_cookie_secure is not None:
            return self.session_cookie_secure
        return self.public_base_url.startswith("https:")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @property
    def fhir_base_url(self) -> str:
        """The gateway's FHIR base URL, the ``aud`` of its tokens."""
        return f"{self.public_base_url}/fhir"


def _describe(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "settings"
    name = str(loc[0])
    if name in Settings.model_fields:
        return f"{ENV_PREFIX}{name.upper()} (TOML key '{name}')"
    if name.upper().startswith(ENV_PREFIX) or name == "MONGODB_URI":
        return name
    return f"'{name}'"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings: ``overrides`` > environment > ``config_file`` (TOML) > defaults."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read the configuration file {config_file}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"the configuration file {config_file} is not TOML: {exc}") from exc
        unknown = sorted(set(values) - set(Settings.model_fields))
        if unknown:
            raise SettingsError(f"unknown setting(s) in {config_file}: {', '.join(unknown)}")
    token = _toml_values.set(values)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"{_describe(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
    finally:
        _toml_values.reset(token)


def load_key_provider(settings: Settings) -> LocalKeyProvider:
    """The key provider of the configured key-encryption key, which wraps, and of the previous
    ones, which only unwrap (P-16: they stay readable while ``fhir-gateway keys rotate`` re-wraps
    what they wrapped); :class:`SettingsError` naming the settings when there is no current key
    or one cannot be read."""
    previous = [
        parse_key(key.get_secret_value().encode()) for key in settings.previous_key_encryption_keys
    ]
    for file in settings.previous_key_encryption_key_files:
        try:
            previous.append(read_key_file(file))
        except ValueError as exc:
            raise SettingsError(
                f"{_describe(('previous_key_encryption_key_files',))}: {exc}"
            ) from None
    return LocalKeyProvider(_current_key(settings), previous)


def _current_key(settings: Settings) -> bytes:
    if settings.key_encryption_key is not None:
        return parse_key(settings.key_encryption_key.get_secret_value().encode())
    path = settings.key_encryption_key_file
    if path is None:
        raise SettingsError(
            f"no key-encryption key: set {_describe(('key_encryption_key_file',))} to a file "
            f"holding 32 random bytes (raw or base64), or {_describe(('key_encryption_key',))} "
            "to their base64 (make one with: openssl rand -base64 32). The gateway keeps its "
            "signing keys and other secrets in MongoDB sealed by this key, and does not run with "
            "them in clear; 'fhir-gateway demo' makes a throwaway key for trying it out"
        )
    try:
        return read_key_file(path)
    except ValueError as exc:
        raise SettingsError(f"{_describe(('key_encryption_key_file',))}: {exc}") from None
