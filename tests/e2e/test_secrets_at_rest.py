"""Secrets at rest (SECURITY.md P-19, with P-04 and P-17): what MongoDB holds once the gateway runs,
what someone holding a copy of the database can do with it (mint no token, forge no paging link),
a gateway given the wrong key-encryption key, and the start-up sealing of secrets that earlier
versions stored in clear, with two instances starting at once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import orjson
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from joserfc.jwk import RSAKey
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from gateway.appkeys import AUTH, MONGO, PIPELINE
from gateway.fhir.context import AccessContext
from gateway.fhir.paging import PageSealer
from gateway.web.errors import Forbidden
from smart_auth.accounts import mfa
from smart_auth.accounts.users import Role, UserStore
from smart_auth.key_provider import (
    LocalKeyProvider,
    Sealed,
    UnknownKeyVersion,
    WrappedKey,
    unseal,
    version_of,
)
from smart_auth.keys import KEYS, STATE, KeyRing, SigningKey
from smart_auth.scopes import ScopeSet
from tests.conftest import SESSION_KEK, RunningGateway, Stack, StartGateway
from tests.e2e.conftest import TRUSTED_APP, register_client
from tests.support.browser import Browser, Page
from tests.support.tokens import ADMIN, AMELIA, ensure_user, minted_token

if TYPE_CHECKING:  # a class named Test..., which pytest must not collect here
    from tests.support.tokens import TestUser

pytestmark = pytest.mark.e2e

PRIVATE_PARAMETERS = frozenset({"d", "p", "q", "dp", "dq", "qi"})
READ = "/Patient/pat-amelia-rossi"  # what a trusted app's token for Amelia may read
SEARCH = "/Observation?patient=Patient/pat-amelia-rossi&_count=1"  # more than one page


def _db(gateway: RunningGateway) -> AsyncDatabase[dict[str, Any]]:
    return gateway.server.app[MONGO][gateway.settings.mongodb_database]


async def _raw_documents(db: AsyncDatabase[dict[str, Any]]) -> list[bytes]:
    """Every document of every collection, as the BSON bytes the database holds."""
    raw: list[bytes] = []
    for name in await db.list_collection_names():
        collection = db.get_collection(
            name, codec_options=CodecOptions(document_class=RawBSONDocument)
        )
        raw += [bytes(cast(RawBSONDocument, doc).raw) async for doc in collection.find({})]
    return raw


async def _documents(db: AsyncDatabase[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for name in await db.list_collection_names() async for doc in db[name].find({})]


def _walk(value: Any) -> Iterator[tuple[str | None, Any]]:
    """Every (key, value) pair inside a document, at any depth (``None`` for list items)."""
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    for key, item in items:
        yield key, item
        if isinstance(item, (dict, list)):
            yield from _walk(item)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _link(secret: bytes) -> PageSealer:
    """How a paging link is sealed, with ``secret`` as the paging secret."""
    return PageSealer(secret, 3600)


def _context(token: str) -> AccessContext:
    """The identity ``token`` carries (what a paging link is bound to), read from its claims."""
    claims = orjson.loads(_unb64url(token.split(".")[1]))
    return AccessContext(
        issuer=claims["iss"],
        subject=claims.get("sub"),
        client_id=claims["client_id"],
        scopes=ScopeSet.parse(claims["scope"]),
        jti=claims["jti"],
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        patient=claims.get("patient"),
    )


async def _status(gateway: RunningGateway, token: str, path: str = READ) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway.fhir}{path}", headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        return answer.status


async def _app_token(gateway: RunningGateway, signing_key: SigningKey | None = None) -> str:
    """A trusted app's token for Amelia, signed by the gateway's key or by ``signing_key``."""
    await register_client(gateway, TRUSTED_APP, trusted=True)
    return await minted_token(
        gateway, client_id=TRUSTED_APP, purposes=("TREAT",), signing_key=signing_key
    )


async def _page_token(gateway: RunningGateway, token: str) -> str:
    """The signed token of the ``next`` link of a search the gateway answered."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway.fhir}{SEARCH}", headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        bundle = await answer.json()
        assert answer.status == 200, bundle
    url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    return str(url).rsplit("/_page/", 1)[1]


async def _sign_in(browser: Browser, gateway: RunningGateway, username: str, password: str) -> Page:
    page = await browser.get(f"{gateway.base}/auth/login")
    assert isinstance(page, Page)
    page = await browser.login(page, username, password)
    assert isinstance(page, Page)
    return page


async def _enrol_totp(gateway: RunningGateway, user: TestUser) -> str:
    """Sign in as an administrator who must set up a second factor; returns its secret."""
    async with Browser(gateway.base) as browser:
        page = await _sign_in(browser, gateway, user.username, user.password)
        assert page.url.startswith(f"{gateway.base}/auth/mfa/setup")
        secret = page.html.split('class="secret">')[1].split("<")[0]
        form = page.forms[0]
        done = await browser.submit(
            page, form, form.data(values={"code": mfa.current_code(secret)})
        )
        assert isinstance(done, Page) and "recovery codes" in done.text
    return secret


async def _start_enrolment(gateway: RunningGateway, user: TestUser) -> str:
    """Open the set-up page of a second factor and leave it unconfirmed; returns its secret."""
    async with Browser(gateway.base) as browser:
        page = await _sign_in(browser, gateway, user.username, user.password)
        assert page.status == 200
        setup = await browser.get(f"{gateway.base}/auth/mfa/setup")
        assert isinstance(setup, Page)
        return setup.html.split('class="secret">')[1].split("<")[0]


async def _sign_in_with_totp(
    gateway: RunningGateway, username: str, password: str, secret: str, at: float
) -> None:
    """Password, then a code of ``secret``, then the admin API (administrators only) answers."""
    async with Browser(gateway.base) as browser:
        page = await _sign_in(browser, gateway, username, password)
        assert page.url.startswith(f"{gateway.base}/auth/mfa?")
        form = page.forms[0]
        answer = await browser.submit(
            page, form, form.data(values={"code": mfa.current_code(secret, at)})
        )
        assert isinstance(answer, Page) and answer.status == 200, answer
        async with browser.session.get(f"{gateway.base}/admin/clients") as response:
            assert response.status == 200


async def test_p19_no_private_key_paging_secret_or_totp_secret_in_clear(
    gateway: RunningGateway,
) -> None:
    auth = gateway.server.app[AUTH]
    await ensure_user(gateway, ADMIN)
    await ensure_user(gateway, AMELIA)
    totp = await _enrol_totp(gateway, ADMIN)
    pending = await _start_enrolment(gateway, AMELIA)
    # The sealed second factor still works (the next time step's code: this one is spent).
    await _sign_in_with_totp(
        gateway, ADMIN.username, ADMIN.password, totp, time.time() + mfa.STEP_SECONDS
    )

    private = (await auth.keys.signing_key()).key.as_dict(private=True)
    paging = gateway.server.app[PIPELINE].pages._secret  # never leaves the process
    needles = [
        paging,
        _b64url(paging).encode(),
        base64.b64encode(paging),
        base64.b64decode(SESSION_KEK),
        SESSION_KEK.encode(),
    ]
    for secret in (totp, pending):
        needles += [secret.encode(), base64.b32decode(secret + "=" * (-len(secret) % 8))]
    for name in PRIVATE_PARAMETERS:
        value = str(private[name])
        needles += [value.encode(), _unb64url(value)]

    db = _db(gateway)
    raw = await _raw_documents(db)
    assert len(raw) > 10  # keys, state, users, sessions, clients...
    for document in raw:
        assert not [needle for needle in needles if needle in document]
    for doc in await _documents(db):
        assert not [key for key, _ in _walk(doc) if key in PRIVATE_PARAMETERS], doc


async def test_p19_database_alone_cannot_mint_a_token(gateway: RunningGateway) -> None:
    legit = await _app_token(gateway)
    assert await _status(gateway, legit) == 200
    # The attacker's copy of the database: every JWK in it is public.
    jwks = [
        value
        for doc in await _documents(_db(gateway))
        for _, value in _walk(doc)
        if isinstance(value, dict) and "kty" in value
    ]
    assert jwks  # the public halves are there, in clear, for the JWKS
    assert all(PRIVATE_PARAMETERS.isdisjoint(jwk) for jwk in jwks)
    # The best they can do is sign with a key of their own under the gateway's kid: refused.
    now = datetime.now(UTC)
    for jwk in jwks:
        theirs = SigningKey(jwk["kid"], RSAKey.generate_key(2048), now)
        assert await _status(gateway, await _app_token(gateway, theirs)) == 401
    # The same forging with the key the gateway holds in memory is what ``legit`` was (200).


async def test_p19_database_alone_cannot_read_or_forge_a_paging_link(
    gateway: RunningGateway,
) -> None:
    token = await _app_token(gateway)
    sealed = await _page_token(gateway, token)
    link = _link(gateway.server.app[PIPELINE].pages._secret).open(sealed, _context(token))
    assert "pat-amelia-rossi" in link.upstream  # what an attacker would read, or change
    forged = replace(link, upstream=link.upstream.replace("pat-amelia-rossi", "pat-maria-garcia"))

    # Every value in the database, taken as the secret (raw, or hashed as a configured one is).
    values = [v for doc in await _documents(_db(gateway)) for _, v in _walk(doc)]
    candidates = [v for v in values if isinstance(v, bytes)]
    candidates += [v.encode() for v in values if isinstance(v, str)]
    candidates += [hashlib.sha256(v).digest() for v in list(candidates)]
    candidates = [c for c in candidates if len(c) >= 32]
    assert len(candidates) > 20  # the sealed blobs, the keys, ids, names...
    # Offline, as an attacker would try to open a link they hold: no candidate opens it.
    for candidate in candidates:
        with pytest.raises(Forbidden):
            _link(candidate).open(sealed, _context(token))
    # A link sealed with any of them for another patient: refused.
    for candidate in set(candidates):
        ours = _link(candidate).seal(forged, _context(token))
        assert await _status(gateway, token, f"/_page/{ours}") == 403
    # Control: the secret the gateway holds in memory (never in the database) does seal a link
    # the gateway follows.
    ours = _link(gateway.server.app[PIPELINE].pages._secret).seal(link, _context(token))
    assert await _status(gateway, token, f"/_page/{ours}") == 200


async def test_p19_a_signing_key_planted_in_the_database_is_not_trusted(
    start_gateway: StartGateway, local_stack_env: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        jwks_refresh_min_seconds=0,  # an unknown kid reloads the key set at once
    )
    current = (await gateway.server.app[AUTH].keys.signing_key()).kid
    db = _db(gateway)
    stored = await db[KEYS].find_one({"_id": current})
    assert stored is not None
    theirs = RSAKey.generate_key(2048, parameters={"kid": "planted", "alg": "RS256"})
    await db[KEYS].insert_one(
        {
            "_id": "planted",
            "public": theirs.as_dict(private=False, use="sig", alg="RS256"),
            "private": stored["private"],  # a real sealed blob, of another key
            "created_at": datetime.now(UTC),
        }
    )
    await db[STATE].update_one({"_id": "current"}, {"$inc": {"version": 1}})  # reload everywhere
    forged = await _app_token(gateway, SigningKey("planted", theirs, datetime.now(UTC)))
    assert await _status(gateway, forged) == 401
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.base}/auth/jwks") as answer:
        published = {key["kid"] for key in (await answer.json())["keys"]}
    assert current in published and "planted" not in published
    assert "signing key planted is not published" in caplog.text


async def test_p19_a_wrong_key_encryption_key_refuses_to_start(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    first = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url, mongodb_uri=local_stack_env.mongo_uri
    )
    await _app_token(first)  # a client registered, a key ring and a paging secret stored
    db = _db(first)

    async def stored() -> list[list[dict[str, Any]]]:
        return [
            [doc async for doc in db[name].find({}).sort("_id", 1)]
            for name in (KEYS, STATE, "gateway_state")
        ]

    before = await stored()
    other = os.urandom(32)
    with pytest.raises(UnknownKeyVersion) as refused:
        await start_gateway(
            upstream_url=local_stack_env.upstream.base_url,
            mongodb_uri=local_stack_env.mongo_uri,
            mongodb_database=first.settings.mongodb_database,
            key_encryption_key=base64.b64encode(other).decode(),
        )
    message = str(refused.value)
    assert version_of(other) in message  # the key it was given
    assert version_of(base64.b64decode(SESSION_KEK)) in message  # the key that sealed them
    assert await stored() == before  # nothing made anew over the old keys, nothing re-sealed

    # The same through `fhir-gateway serve`: a clear message and exit status 2.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")},
        "FHIR_GATEWAY_UPSTREAM_URL": local_stack_env.upstream.base_url,
        "FHIR_GATEWAY_MONGODB_URI": local_stack_env.mongo_uri,
        "FHIR_GATEWAY_MONGODB_DATABASE": first.settings.mongodb_database,
        "FHIR_GATEWAY_PORT": "0",
        "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": base64.b64encode(other).decode(),
    }
    serve = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "fhir-gateway"),
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(serve.communicate(), timeout=60)
    assert serve.returncode == 2, err
    assert b"do not open with the configured key-encryption key" in err
    assert version_of(other).encode() in err
    assert b"Traceback" not in err


async def test_p19_serve_refuses_to_start_without_a_key_encryption_key() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")},
        "FHIR_GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9/fhir",  # never reached
        "FHIR_GATEWAY_MONGODB_URI": "mongodb://127.0.0.1:9",
    }
    serve = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "fhir-gateway"),
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(serve.communicate(), timeout=60)
    assert serve.returncode == 2, err
    assert b"FHIR_GATEWAY_KEY_ENCRYPTION_KEY_FILE" in err
    assert b"FHIR_GATEWAY_KEY_ENCRYPTION_KEY " in err
    assert b"Traceback" not in err


def _legacy_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256"})


async def test_p19_secrets_stored_in_clear_are_sealed_at_start_up_by_two_instances_at_once(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    """A database written by an earlier version: signing keys, the paging secret, a TOTP secret
    and an enrolment in progress, all in clear. Two gateways start on it together."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack_env.mongo_uri, tz_aware=True
    )
    db = client[database]
    now = datetime.now(UTC)
    current, retired = _legacy_key("legacy-current"), _legacy_key("legacy-retired")
    paging = os.urandom(32)
    totp = mfa.new_secret()
    try:
        await db[KEYS].insert_many(
            [
                {
                    "_id": "legacy-retired",
                    "jwk": retired.as_dict(private=True),
                    "created_at": now - timedelta(days=31),
                    "retired_at": now - timedelta(minutes=1),
                    "publish_until": now + timedelta(hours=1),
                },
                {
                    "_id": "legacy-current",
                    "jwk": current.as_dict(private=True),
                    "created_at": now - timedelta(days=1),
                },
            ]
        )
        await db[STATE].insert_one(
            {"_id": "current", "kid": "legacy-current", "version": 2, "rotated_at": now}
        )
        await db["gateway_state"].insert_one({"_id": "paging_secret", "value": paging})
        users = UserStore(db, LocalKeyProvider(base64.b64decode(SESSION_KEK)))
        password = "a legacy administrator passphrase"
        admin = await users.add(username="legacy-admin", role=Role.ADMIN, password=password)
        await db["users"].update_one(
            {"_id": admin.user_id},
            {"$set": {"mfa": {"secret": totp, "last_step": 0, "enrolled_at": now}}},
        )
        await db["sessions"].insert_one(
            {
                "_id": uuid.uuid4().hex,
                "user_id": admin.user_id,
                "pending_mfa": mfa.new_secret(),
                "expires_at": now + timedelta(hours=1),
            }
        )

        one, two = await asyncio.gather(
            *(
                start_gateway(
                    upstream_url=local_stack_env.upstream.base_url,
                    mongodb_uri=local_stack_env.mongo_uri,
                    mongodb_database=database,
                )
                for _ in range(2)
            )
        )

        keys = [doc async for doc in db[KEYS].find({}).sort("_id", 1)]
        assert [doc["_id"] for doc in keys] == ["legacy-current", "legacy-retired"]  # none new
        assert all("jwk" not in doc and {"public", "private"} <= set(doc) for doc in keys)
        assert (await db[STATE].find_one({"_id": "current"}) or {})["kid"] == "legacy-current"
        state = await db["gateway_state"].find_one({"_id": "paging_secret"})
        assert state is not None and "value" not in state and "sealed" in state
        user = await db["users"].find_one({"_id": admin.user_id})
        assert user is not None and set(user["mfa"]) == {
            "sealed_secret",
            "last_step",
            "enrolled_at",
        }
        assert await db["sessions"].count_documents({"pending_mfa": {"$exists": True}}) == 0
        for raw in await _raw_documents(db):
            assert paging not in raw and totp.encode() not in raw
            assert str(current.as_dict(private=True)["d"]).encode() not in raw

        for gateway in (one, two):
            # Tokens signed before the upgrade, by the current and by the retired key, verify.
            for key, created in ((current, now - timedelta(days=1)), (retired, now)):
                old = await _app_token(gateway, SigningKey(str(key.kid), key, created))
                assert await _status(gateway, old) == 200
            assert (await gateway.server.app[AUTH].keys.signing_key()).kid == "legacy-current"
            # The paging secret is the one from before, on both instances.
            token = await _app_token(gateway)
            _link(paging).open(await _page_token(gateway, token), _context(token))
        # The second factor works, sealed (P-04 with P-19).
        await _sign_in_with_totp(two, "legacy-admin", password, totp, time.time())
        # An account written in clear after the start-up sealing is sealed when it is read.
        late = await users.add(username="late-admin", role=Role.ADMIN, password=password)
        await db["users"].update_one(
            {"_id": late.user_id}, {"$set": {"mfa": {"secret": totp, "last_step": 0}}}
        )
        found = await one.server.app[AUTH].users.by_username("late-admin")
        assert found is not None and found.mfa_enrolled
        assert await one.server.app[AUTH].users.mfa_secret(found) == totp
        assert await db["users"].count_documents({"mfa.secret": {"$exists": True}}) == 0
    finally:
        await client.close()


async def test_p19_concurrent_sealing_changes_each_secret_exactly_once(
    local_stack_env: Stack,
) -> None:
    """Four instances (each with its own connections) seal one database at the same moment."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    clients: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(local_stack_env.mongo_uri, tz_aware=True) for _ in range(4)
    ]
    provider = LocalKeyProvider(os.urandom(32))
    db = clients[0][database]
    keys = {f"key-{i}": _legacy_key(f"key-{i}") for i in range(4)}
    secrets = {f"user-{i}": mfa.new_secret() for i in range(40)}
    try:
        await db[KEYS].insert_many(
            [
                {"_id": kid, "jwk": key.as_dict(private=True), "created_at": datetime.now(UTC)}
                for kid, key in keys.items()
            ]
        )
        await db["users"].insert_many(
            [
                {"_id": uid, "mfa": {"secret": secret, "last_step": 0}}
                for uid, secret in secrets.items()
            ]
        )
        rings = [KeyRing(client[database], provider) for client in clients]
        stores = [UserStore(client[database], provider) for client in clients]
        counts = await asyncio.gather(
            *(ring.seal_plaintext() for ring in rings),
            *(store.seal_plaintext_mfa() for store in stores),
        )
        assert sum(counts[:4]) == len(keys) and sum(counts[4:]) == len(secrets)
        assert await db[KEYS].count_documents({"jwk": {"$exists": True}}) == 0
        assert await db["users"].count_documents({"mfa.secret": {"$exists": True}}) == 0
        for doc in [doc async for doc in db[KEYS].find({})]:
            thumbprint = RSAKey.import_key(doc["public"]).thumbprint()
            opened = await unseal(
                provider, Sealed.from_doc(doc["private"]), f"signing-key:{doc['_id']}:{thumbprint}"
            )
            assert orjson.loads(opened)["d"] == keys[doc["_id"]].as_dict(private=True)["d"]
        for doc in [doc async for doc in db["users"].find({})]:
            sealed = Sealed.from_doc(doc["mfa"]["sealed_secret"])
            assert (await unseal(provider, sealed, f"totp:{doc['_id']}")).decode() == secrets[
                doc["_id"]
            ]
    finally:
        for client in clients:
            await client.close()


class _CountingProvider:
    """A key provider that counts its calls."""

    def __init__(self, inner: LocalKeyProvider) -> None:
        self.inner = inner
        self.wraps = 0
        self.unwraps = 0

    @property
    def current_version(self) -> str:
        return self.inner.current_version

    async def wrap(self, data_key: bytes) -> WrappedKey:
        self.wraps += 1
        return await self.inner.wrap(data_key)

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        self.unwraps += 1
        return await self.inner.unwrap(wrapped)


async def test_p19_requests_do_not_unwrap_keys(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    """The key provider may be a network call (a KMS): requests must not need it. The one
    exception is the encrypted cache's first entry of a patient, which makes (and wraps) the
    patient's data key; the instance keeps it, so nothing is unwrapped (P-15)."""
    provider = _CountingProvider(LocalKeyProvider(os.urandom(32)))
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        key_provider=provider,
    )
    assert provider.unwraps >= 2  # the signing key and the paging secret, at start-up
    calls = (provider.wraps, provider.unwraps)
    for _ in range(10):
        token = await _app_token(gateway)  # signed with the key held in memory
        assert await _status(gateway, token) == 200
        page = await _page_token(gateway, token)
        assert await _status(gateway, token, f"/_page/{page}") == 200
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.base}/auth/jwks") as jwks:
            assert jwks.status == 200
    assert (provider.wraps, provider.unwraps) == (calls[0] + 1, calls[1])
