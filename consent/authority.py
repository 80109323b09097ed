"""Who may change a Consent through the FHIR API (CONSENT.md C-23; DESIGN.md "Authority").

Consent is the patient's act. Permits are given, and denies lifted, by the patient in the
gateway's own pages (the consent screen, "Connected apps") or by an administrator on a documented
request — never by an app's token, least of all for itself. Through ``/fhir/Consent`` an app:

- reads the Consents that concern it (:func:`concerns`: those naming it as an actor, and those
  naming no app at all, which apply to every app);
- withdraws its own permit (:func:`check_update`): the only change it may make is setting an
  active permit that names it, and no other app, to ``inactive``;
- nothing else: no create, no delete, no other update.

An app registered with ``manages_consent`` (the hospital's own patient portal, where the patient is
signed in) may do for the patients its token reaches what the patient could do on the gateway's
pages, with one limit that holds for every writer that is an app: **no app widens its own
access**. Every permit it writes must be limited, on its provision chain, to an actor list of
other apps only (so it can never apply to the writer, nor to every app), and it may not change,
delete or deactivate a Consent holding a deny that could apply to itself.

These are pure functions over Consent dicts; the gateway calls them before anything is stored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from consent.codes import CLIENT_SYSTEM
from consent.errors import ChangeNotAllowed
from consent.model import client_key, reference_key

_IGNORED = frozenset({"id", "meta", "text", "status"})


@dataclass(frozen=True, slots=True)
class Writer:
    """The app asking to change a Consent."""

    client_id: str
    manages_consent: bool = False


def _actor_keys(provision: Mapping[str, Any]) -> list[str | None]:
    """The reference keys of a provision's actors (``None`` for one that names nothing)."""
    actors = provision.get("actor")
    if not isinstance(actors, list):
        return []
    return [
        reference_key(actor.get("reference")) if isinstance(actor, Mapping) else None
        for actor in actors
    ]


def _chains(
    consent: Mapping[str, Any],
) -> Iterator[tuple[str, tuple[Mapping[str, Any], ...]]]:
    """Every provision with its effective type and its chain (root first)."""
    stack: list[tuple[Any, tuple[Mapping[str, Any], ...], str]] = [
        (consent.get("provision"), (), "permit")
    ]
    while stack:
        node, parents, inherited = stack.pop()
        if not isinstance(node, Mapping):
            continue
        kind = node.get("type") if node.get("type") in ("permit", "deny") else inherited
        chain = (*parents, node)
        yield str(kind), chain
        children = node.get("provision")
        for child in children if isinstance(children, list) else ():
            stack.append((child, chain, str(kind)))


def _excludes(chain: tuple[Mapping[str, Any], ...], key: str) -> bool:
    """The chain can never apply to the app ``key``: one of its provisions lists only apps as
    actors, and not that one. (Actors of one provision are alternatives; a chain's provisions must
    all match, C-07.)"""
    prefix = f"{CLIENT_SYSTEM}|"
    for provision in chain:
        keys = _actor_keys(provision)
        if keys and all(k is not None and k.startswith(prefix) for k in keys) and key not in keys:
            return True
    return False


def client_ids(consent: Mapping[str, Any]) -> frozenset[str]:
    """The apps the Consent names as actors, anywhere."""
    prefix = f"{CLIENT_SYSTEM}|"
    found: set[str] = set()
    for _, chain in _chains(consent):
        found |= {k[len(prefix) :] for k in _actor_keys(chain[-1]) if k and k.startswith(prefix)}
    return frozenset(found)


def concerns(consent: Mapping[str, Any], client_id: str) -> bool:
    """The Consent is one this app may read: it names the app, or it names no app at all (it
    applies to every app)."""
    named = client_ids(consent)
    return not named or client_id in named


def _permits_for(consent: Mapping[str, Any], key: str) -> list[str]:
    """Why the Consent holds a permit that could apply to the app ``key`` (empty: none does)."""
    return [
        "a permit that could apply to this app itself, or to every app"
        for kind, chain in _chains(consent)
        if kind == "permit" and not _excludes(chain, key)
    ]


def _denies_for(consent: Mapping[str, Any], key: str) -> bool:
    return any(kind == "deny" and not _excludes(chain, key) for kind, chain in _chains(consent))


def _unchanged_but_status(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    def kept(resource: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if k not in _IGNORED}

    return kept(current) == kept(new)


def _is_own_permit(consent: Mapping[str, Any], client_id: str) -> bool:
    provision = consent.get("provision")
    root_permit = isinstance(provision, Mapping) and provision.get("type") == "permit"
    return root_permit and client_ids(consent) == {client_id}


def check_create(writer: Writer, new: Mapping[str, Any]) -> None:
    """An app's create, or :class:`ChangeNotAllowed`."""
    if not writer.manages_consent:
        raise ChangeNotAllowed(
            "an app cannot give consent: the patient gives it on this gateway's consent screen "
            "or their 'Connected apps' page"
        )
    _check_no_self_permit(writer, new)


def check_update(writer: Writer, current: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """An app's update, or :class:`ChangeNotAllowed`."""
    withdrawal = (
        current.get("status") == "active"
        and new.get("status") == "inactive"
        and _unchanged_but_status(current, new)
    )
    if withdrawal and _is_own_permit(current, writer.client_id):
        return  # an app may always withdraw its own permit
    if not writer.manages_consent:
        raise ChangeNotAllowed(
            "an app may only withdraw its own permit (the same Consent with status 'inactive'); "
            "other changes are the patient's, on this gateway's pages"
        )
    _check_no_self_deny(writer, current)
    _check_no_self_permit(writer, new)


def check_delete(writer: Writer, current: Mapping[str, Any]) -> None:
    """An app's delete, or :class:`ChangeNotAllowed`."""
    if not writer.manages_consent:
        raise ChangeNotAllowed(
            "an app cannot delete a Consent; it may withdraw its own permit by setting its "
            "status to 'inactive'"
        )
    _check_no_self_deny(writer, current)


def _check_no_self_permit(writer: Writer, new: Mapping[str, Any]) -> None:
    reasons = _permits_for(new, client_key(writer.client_id))
    if reasons:
        raise ChangeNotAllowed(
            f"an app cannot write {reasons[0]}: every permit must name, as its actors, only "
            "other apps"
        )


def _check_no_self_deny(writer: Writer, current: Mapping[str, Any]) -> None:
    if current.get("status") == "active" and _denies_for(current, client_key(writer.client_id)):
        raise ChangeNotAllowed(
            "this Consent holds a deny that applies to this app: only the patient, on this "
            "gateway's pages, or an administrator can change it"
        )
