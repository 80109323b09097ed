"""P-01: the gateway terminates TLS itself when it has a certificate (TLS 1.2 or newer,
forward-secret AEAD suites only) and says so with ``Strict-Transport-Security``. The certificate is
made at test time for 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import warnings
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import RunningGateway, Stack, StartGateway

pytestmark = pytest.mark.e2e


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "gateway.crt", directory / "gateway.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def _https_gateway(
    start_gateway: StartGateway, stack: Stack, tmp_path: Path
) -> tuple[RunningGateway, Path]:
    cert_file, key_file = self_signed(tmp_path)
    port_gateway = await start_gateway(
        upstream_url=stack.upstream.base_url,
        mongodb_uri=stack.mongo_uri,
        tls_cert_file=cert_file,
        tls_key_file=key_file,
    )
    return port_gateway, cert_file


def _client_context(cert_file: Path, *, newest: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert_file))
    if newest is not None:
        context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer what the test asks for
        with warnings.catch_warnings():  # old protocol versions on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            context.maximum_version = newest
    return context


async def test_p01_the_gateway_serves_https_with_hsts(
    start_gateway: StartGateway, local_stack_env: Stack, tmp_path: Path
) -> None:
    gateway, cert_file = await _https_gateway(start_gateway, local_stack_env, tmp_path)
    url = f"https://127.0.0.1:{gateway.settings.port}"
    connector = aiohttp.TCPConnector(ssl=_client_context(cert_file))
    async with aiohttp.ClientSession(connector=connector) as http:
        for path in ("/fhir/metadata", "/healthz", "/fhir/Patient"):
            async with http.get(url + path) as response:
                await response.read()
                assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
                assert response.connection is None or response.connection.transport is not None
        async with http.get(url + "/fhir/metadata") as response:
            assert response.status == 200
            tls = response.connection.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    plain = aiohttp.TCPConnector()
    async with aiohttp.ClientSession(connector=plain) as http:  # plain http is not served
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{gateway.settings.port}/healthz") as response:
                await response.read()


@pytest.mark.parametrize("newest", [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1])
async def test_p01_clients_older_than_tls_1_2_are_refused(
    newest: ssl.TLSVersion, start_gateway: StartGateway, local_stack_env: Stack, tmp_path: Path
) -> None:
    gateway, cert_file = await _https_gateway(start_gateway, local_stack_env, tmp_path)
    url = f"https://127.0.0.1:{gateway.settings.port}/healthz"
    # The same relaxed client reaches the gateway with TLS 1.2: the refusal is the server's.
    relaxed = _client_context(cert_file, newest=ssl.TLSVersion.TLSv1_2)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=relaxed)) as http,
        http.get(url) as response,
    ):
        assert response.status == 200
    old = _client_context(cert_file, newest=newest)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=old)) as http:
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            async with http.get(url) as response:
                await response.read()
    # The server alerts (protocol_version) or drops the connection at the client's hello.
    assert isinstance(refused.value.os_error, ssl.SSLError | ConnectionResetError)


async def test_p01_suites_without_forward_secrecy_are_refused(
    start_gateway: StartGateway, local_stack_env: Stack, tmp_path: Path
) -> None:
    gateway, cert_file = await _https_gateway(start_gateway, local_stack_env, tmp_path)
    context = _client_context(cert_file, newest=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("AES128-GCM-SHA256:AES256-SHA:@SECLEVEL=0")  # RSA key exchange only
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        with pytest.raises(aiohttp.ClientConnectorError):
            url = f"https://127.0.0.1:{gateway.settings.port}/healthz"
            async with http.get(url) as response:
                await response.read()
