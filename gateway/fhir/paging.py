"""Opaque, sealed paging links (DESIGN.md "Rules that make the pipeline safe"; SMART.md S-26).

Every ``next``/``previous``/``first``/``last`` link of a Bundle is replaced by the gateway's own
URL, ``{fhir base}/_page/{token}``. The token carries the upstream link (relative to the upstream
base, so following it can only reach the configured upstream, P-10), the interaction it
continues, and the identity it was issued to (issuer, subject, client, patient), with an expiry.
It is encrypted with AES-256-GCM (P-14: the search it continues names patients, and links end up
in logs and browser histories): each token under its own key, derived with HKDF-SHA256 from the
paging secret and a random salt the token carries, so no number of links wears the key out.
Following a page link re-checks all of it: a changed byte, another token's identity or an expired
link gets 403. The secret is shared by every gateway instance (a setting, or a random key kept in
MongoDB sealed by the key provider, P-19), so a link works on any instance.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from gateway.fhir.access import AccessDecision, AccessPolicy
from gateway.fhir.context import AccessContext
from gateway.fhir.interaction import FhirInteraction, Kind
from gateway.proxy.rewrite import UrlRewriter
from gateway.web.errors import Forbidden
from smart_auth.key_provider import KeyProvider, Sealed, WrappedField, seal, unseal
from smart_auth.scopes import Letter

_STATE = "gateway_state"
_SECRET_ID = "paging_secret"  # noqa: S105 - the name of a document, not a secret
_AAD = "paging-secret"
SEALED = WrappedField(_STATE, "sealed")
"""Where the paging secret is sealed (re-wrapped on KEK rotation, P-16)."""
_PAGE_RELATIONS = frozenset({"next", "previous", "prev", "first", "last"})
_VERSION = "p1"
_SALT_BYTES = 16
_NONCE_BYTES = 12
_TOKEN_AAD = b"fhir-gateway paging link"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strictly: only the one unpadded encoding :func:`_b64` writes decodes (its last character
    carries bits a lenient decoder ignores, so an altered one could otherwise decode the same)."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(raw) != text:
        raise ValueError("not the canonical encoding")
    return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class PageLink:
    """A verified paging link: where to go upstream and what interaction it continues."""

    upstream: str
    """Relative to the upstream base: ``/Patient?_count=2&_offset=2``, ``?_getpages=...``."""
    kind: str
    resource_type: str | None
    letters: str
    """The scope letters released resources need (``s``, ``rs``)."""
    shaping: tuple[tuple[str, str], ...] = ()
    """The caller's ``_elements``/``_summary``, applied to every page."""

    def decision(self, context: AccessContext) -> AccessDecision:
        """The access decision a followed link is released under: the one its search had."""
        letters: frozenset[Letter] = frozenset(self.letters)  # type: ignore[arg-type]
        interaction = FhirInteraction(Kind(self.kind), "GET", self.resource_type, params=())
        return AccessDecision(
            interaction=interaction,
            policy=AccessPolicy(context),
            letters=letters,
            patient_only=False,
        )


def _binding(context: AccessContext) -> list[str | None]:
    return [context.issuer, context.subject, context.client_id, context.patient]


class PageSealer:
    """Seals and opens paging tokens (the module's docstring)."""

    def __init__(self, secret: bytes, lifetime_seconds: int) -> None:
        if len(secret) < 32:
            raise ValueError("the paging secret must be at least 32 bytes")
        self._secret = secret
        self._lifetime = lifetime_seconds

    def _cipher(self, salt: bytes) -> AESGCM:
        key = HKDF(SHA256(), 32, salt, _TOKEN_AAD).derive(self._secret)
        return AESGCM(key)

    def seal(self, link: PageLink, context: AccessContext) -> str:
        body: dict[str, Any] = {
            "u": link.upstream,
            "k": link.kind,
            "t": link.resource_type,
            "l": link.letters,
            "s": [list(pair) for pair in link.shaping],
            "b": _binding(context),
            "e": int(time.time()) + self._lifetime,
        }
        salt, nonce = secrets.token_bytes(_SALT_BYTES), secrets.token_bytes(_NONCE_BYTES)
        sealed = self._cipher(salt).encrypt(nonce, orjson.dumps(body), _TOKEN_AAD)
        return f"{_VERSION}.{_b64(salt + nonce + sealed)}"

    def open(self, token: str, context: AccessContext) -> PageLink:
        """The link inside ``token``, if it is intact, unexpired and issued to ``context``."""
        version, _, data = token.partition(".")
        try:
            raw = _unb64(data)
            if version != _VERSION or len(raw) <= _SALT_BYTES + _NONCE_BYTES:
                raise ValueError
            salt, rest = raw[:_SALT_BYTES], raw[_SALT_BYTES:]
            plain = self._cipher(salt).decrypt(rest[:_NONCE_BYTES], rest[_NONCE_BYTES:], _TOKEN_AAD)
            body = orjson.loads(plain)
        except (ValueError, binascii.Error, InvalidTag, orjson.JSONDecodeError):
            raise Forbidden(
                "this paging link is not valid (it was altered or not issued here)"
            ) from None
        if body.get("b") != _binding(context):
            raise Forbidden("this paging link was issued to another token's user, app or patient")
        if not isinstance(body.get("e"), int) or body["e"] < time.time():
            raise Forbidden("this paging link has expired; run the search again")
        shaping = tuple((str(k), str(v)) for k, v in body.get("s", []))
        return PageLink(
            upstream=str(body["u"]),
            kind=str(body["k"]),
            resource_type=body.get("t"),
            letters=str(body["l"]),
            shaping=shaping,
        )

    def seal_links(
        self,
        bundle: dict[str, Any],
        decision: AccessDecision,
        *,
        rewriter: UrlRewriter,
        fhir_base: str,
        self_url: str,
        shaping: Sequence[tuple[str, str]],
    ) -> None:
        """Replace a Bundle's paging links by sealed gateway links bound to the token, and its
        ``self`` link by the URL the caller asked for; other links go."""
        interaction = decision.interaction
        links: list[dict[str, str]] = [{"relation": "self", "url": self_url}] if self_url else []
        for link in bundle.get("link") or []:
            relation, url = link.get("relation"), link.get("url")
            if relation not in _PAGE_RELATIONS or not isinstance(url, str):
                continue
            relative = rewriter.relative_to_public(url)
            if relative is None:
                continue
            page = PageLink(
                upstream=relative,
                kind=interaction.kind.value,
                resource_type=interaction.resource_type,
                letters="".join(sorted(decision.letters)),
                shaping=tuple(shaping),
            )
            token = self.seal(page, decision.policy.context)
            links.append({"relation": relation, "url": f"{fhir_base}/_page/{token}"})
        if links:
            bundle["link"] = links
        else:
            bundle.pop("link", None)


async def load_secret(
    db: AsyncDatabase[dict[str, Any]], configured: str | None, provider: KeyProvider
) -> bytes:
    """The paging secret: the configured one, else the one every instance shares in MongoDB
    (created by whichever instance starts first, sealed by ``provider``). A secret an earlier
    version stored in clear is sealed here, once, whichever instance gets there first; raises
    :class:`~smart_auth.key_provider.KeyProviderError` when the stored one does not unseal (it is
    never replaced: links already issued would stop working, and a wrong key must be noticed)."""
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    state = db[_STATE]
    existing = await state.find_one({"_id": _SECRET_ID})
    if existing is None:
        sealed = await seal(provider, secrets.token_bytes(32), _AAD)
        with contextlib.suppress(DuplicateKeyError):  # another instance created it first
            await state.insert_one({"_id": _SECRET_ID, "sealed": sealed.to_doc()})
    elif "value" in existing:  # in clear, written by an earlier version
        sealed = await seal(provider, bytes(existing["value"]), _AAD)
        await state.update_one(
            {"_id": _SECRET_ID, "value": {"$exists": True}},
            {"$set": {"sealed": sealed.to_doc()}, "$unset": {"value": ""}},
        )
    existing = await state.find_one({"_id": _SECRET_ID})
    assert existing is not None
    return await unseal(provider, Sealed.from_doc(existing.get("sealed")), _AAD)
