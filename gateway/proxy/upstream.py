"""The one connection to the upstream FHIR server (step 5 of the pipeline, the network half).

Every request goes to the configured base URL and nowhere else (P-10): the path is rebuilt from a
parsed :class:`~gateway.fhir.interaction.FhirInteraction`, redirects are not followed, and the
gateway authenticates with its own credentials (P-02, :mod:`gateway.proxy.credentials`). Failures
become FHIR errors that say what happened without naming the upstream (P-14): unreachable → 502,
too slow → 504, a 5xx → 502.
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from gateway.proxy.credentials import credentials_for
from gateway.settings import Settings
from gateway.web.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.web.logs import request_id_var

log = logging.getLogger(__name__)

FHIR_JSON_ACCEPT = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    seconds: float

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    @property
    def is_json(self) -> bool:
        ctype = self.content_type
        return ctype in ("application/fhir+json", "application/json") or ctype.endswith("+json")


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    if not settings.upstream_url or not settings.upstream_url.startswith("https:"):
        return True
    if not settings.upstream_verify_tls:
        log.warning("TLS verification towards the upstream FHIR server is OFF")
        return False
    context = ssl.create_default_context(
        cafile=str(settings.upstream_ca_file) if settings.upstream_ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.upstream_client_cert_file and settings.upstream_client_key_file:
        context.load_cert_chain(
            str(settings.upstream_client_cert_file), str(settings.upstream_client_key_file)
        )
    return context


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """The single ``ClientSession`` shared by every request to the upstream."""
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_max_connections,
        ssl=_ssl_context(settings),
        ttl_dns_cache=300,
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.upstream_timeout_seconds,
        sock_connect=settings.upstream_connect_timeout_seconds,
    )
    # Cookies from the upstream are never kept nor sent back: DummyCookieJar.
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        raise_for_status=False,
    )


class UpstreamTooLarge(UpstreamUnavailable):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the upstream FHIR server's answer is larger than {limit} bytes; page the search "
            "(_count) or ask for less"
        )


class Upstream:
    """Sends FHIR requests to the configured upstream base URL."""

    def __init__(self, session: aiohttp.ClientSession, settings: Settings) -> None:
        if settings.upstream_url is None:
            raise ValueError("upstream_url is not set")
        self._session = session
        self._base = URL(settings.upstream_url)
        self._max_body = settings.max_upstream_body_bytes
        self._credentials = credentials_for(settings, session)

    @property
    def base_url(self) -> str:
        return str(self._base)

    def url_for(self, relative_path: str, params: Sequence[tuple[str, str]] = ()) -> URL:
        """An absolute upstream URL; ``relative_path`` comes from a parsed interaction."""
        path = self._base.path.rstrip("/")
        if relative_path:
            path = f"{path}/{relative_path}"
        url = self._base.with_path(path, encoded=False)
        return url.with_query(list(params)) if params else url

    def link_url(self, relative: str) -> URL:
        """The upstream URL of a paging link kept relative to the base (``/Type?...`` or
        ``?...``), exactly as the upstream encoded it."""
        if not relative.startswith(("/", "?")):
            raise ValueError("a relative upstream link starts with '/' or '?'")
        return URL(str(self._base).rstrip("/") + relative, encoded=True)

    async def send(
        self,
        method: str,
        relative_path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        url: URL | None = None,
    ) -> UpstreamResponse:
        """Send one request; raise 502/504 FHIR errors when the upstream cannot answer. ``url``
        (from :meth:`link_url`) replaces ``relative_path`` and ``params``. The caller's request id
        goes along as ``X-Request-Id``, so that both servers' logs can be matched."""
        own = await self._credentials.headers()
        out: dict[str, str] = {**(headers or {}), "Accept": FHIR_JSON_ACCEPT, **own}
        if content_type:
            out["Content-Type"] = content_type
        request_id = request_id_var.get()
        if request_id != "-":
            out["X-Request-Id"] = request_id
        url = url if url is not None else self.url_for(relative_path, params)
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, url, data=_payload(body), headers=out, allow_redirects=False
            ) as response:
                payload = await self._read(response)
                if response.status == 401:
                    self._credentials.rejected()
                return UpstreamResponse(
                    response.status, response.headers, payload, time.perf_counter() - started
                )
        except TimeoutError as exc:
            raise UpstreamTimeout("the upstream FHIR server did not answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("upstream request failed: %s", type(exc).__name__)
            raise UpstreamUnavailable("the upstream FHIR server cannot be reached") from exc

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The answer's body, at most ``max_upstream_body_bytes`` of it: a larger one is a 502,
        read no further (a search should page instead)."""
        declared = response.content_length
        if declared is not None and declared > self._max_body:
            raise UpstreamTooLarge(self._max_body)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > self._max_body:
                raise UpstreamTooLarge(self._max_body)
            chunks.append(chunk)
        return b"".join(chunks)

    async def ping(self, within_seconds: float = 3.0) -> bool:
        """True when the upstream answers its CapabilityStatement."""
        try:
            async with asyncio.timeout(within_seconds):
                response = await self.send("GET", "metadata")
        except (TimeoutError, UpstreamTimeout, UpstreamUnavailable):
            return False
        return response.status == 200


_LARGE_BODY = 1024 * 1024


def _payload(body: bytes | None) -> bytes | io.BytesIO | None:
    """A large body goes as a stream, which aiohttp writes without holding up the event loop."""
    return io.BytesIO(body) if body is not None and len(body) >= _LARGE_BODY else body
