"""The leak suite's harness: requests that remember what the caller sent, and the judge every
answer goes through (see ``tests/e2e/test_leaks.py`` for the rules it checks). Whose data a
resource is comes from the fixture data's own ownership table, never from the gateway's code."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import aiohttp
import orjson

from tests.support.fixture_data import PATIENTS, owner

A = "pat-amelia-rossi"
OTHERS = tuple(p for p in PATIENTS if p != A)
PAGE_LINK = re.compile(r"/_page/[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+$")


def markers(others: Iterable[str]) -> tuple[str, ...]:
    """Strings that betray another patient: ``Patient/<id>``, and the name part every id of their
    records carries (``obs-daniel-novak-3``, ``enc-daniel-novak-1``, ``relperson-maria-garcia``)."""
    out: list[str] = []
    for other in others:
        out += [f"Patient/{other}", other.removeprefix("pat-")]
    return tuple(out)


# --- requests and the judge --------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    raw: bytes
    sent: str
    """What the caller itself sent (decoded URL and body): an answer may echo it."""

    @property
    def body(self) -> Any:
        return orjson.loads(self.raw) if self.raw.strip() else None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    form: dict[str, str] | list[tuple[str, str]] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    data: Any = None
    sent = unquote(url)
    if form is not None:
        data = form
        sent += " " + " ".join(
            f"{k}={v}" for k, v in (form.items() if isinstance(form, dict) else form)
        )
    elif body is not None:
        data = orjson.dumps(body)
        sent += " " + data.decode()
    async with session.request(method, url, data=data, headers=headers) as response:
        raw = await response.read()
        return Reply(response.status, tuple(response.headers.items()), raw, sent)


def _bundles(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("resourceType") == "Bundle":
            yield node
        for value in node.values():
            yield from _bundles(value)
    elif isinstance(node, list):
        for item in node:
            yield from _bundles(item)


def _resources(node: Any) -> Iterator[dict[str, Any]]:
    """Every resource in an answer, at any depth (entries, nested Bundles, contained)."""
    if isinstance(node, dict):
        if isinstance(node.get("resourceType"), str) and node["resourceType"] not in (
            "Bundle",
            "OperationOutcome",
        ):
            yield node
        for value in node.values():
            yield from _resources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _resources(item)


def _issue_texts(outcome: dict[str, Any]) -> Iterator[str]:
    for issue in outcome.get("issue") or []:
        if isinstance(issue.get("diagnostics"), str):
            yield issue["diagnostics"]
        text = (issue.get("details") or {}).get("text")
        if isinstance(text, str):
            yield text


@dataclass
class Judge:
    """The leak checks every answer goes through."""

    fhir: str
    upstream: str
    others: tuple[str, ...] = OTHERS

    def _markers(self) -> tuple[str, ...]:
        return markers(self.others)

    def _strip_echoes(self, node: Any, reply: Reply) -> Any:
        """A copy of ``node`` without what may echo the request: OperationOutcome texts and
        ``self`` links (each checked here to echo only what the caller sent)."""
        if isinstance(node, list):
            return [self._strip_echoes(item, reply) for item in node]
        if not isinstance(node, dict):
            return node
        out = {k: self._strip_echoes(v, reply) for k, v in node.items()}
        if node.get("resourceType") == "OperationOutcome":
            for text in _issue_texts(node):
                for marker in self._markers():
                    assert marker not in text or marker in reply.sent, (
                        f"an OperationOutcome names {marker!r}, which the request did not: {text}"
                    )
            for issue in out.get("issue") or []:
                issue.pop("diagnostics", None)
                issue.pop("details", None)
        if node.get("resourceType") == "Bundle" and isinstance(node.get("link"), list):
            kept = []
            for link in node["link"]:
                if link.get("relation") == "self":
                    for marker in self._markers():
                        assert marker not in link["url"] or marker in reply.sent, link
                else:
                    kept.append(link)
            out["link"] = kept
        return out

    def nothing_of_others(self, reply: Reply, *, at_most: int | None = None) -> Any:
        """Assert the leak rules on one answer; returns the parsed body."""
        body = reply.body if reply.raw.strip() else None
        text = reply.raw.decode(errors="replace")
        origin = self.upstream.rsplit("/fhir", 1)[0]
        assert origin not in text, "the upstream's address reached the caller"
        for name, value in reply.headers:
            assert origin not in value, (name, value)
            for marker in self._markers():
                assert marker not in value, f"header {name}: {value} names {marker!r}"
        if reply.status >= 400:
            assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", (
                reply.status,
                text[:300],
            )
        if body is None:
            return None
        for resource in _resources(body):
            leaked = owner(resource)
            assert leaked not in self.others, (
                f"{resource['resourceType']}/{resource.get('id')} belongs to {leaked}"
            )
        released = orjson.dumps(self._strip_echoes(body, reply)).decode()
        for marker in self._markers():
            assert marker not in released, f"the answer names {marker!r}: {released[:600]}"
        for bundle in _bundles(body):
            self._bundle_rules(bundle, reply, at_most)
        return body

    def _bundle_rules(self, bundle: dict[str, Any], reply: Reply, at_most: int | None) -> None:
        links = bundle.get("link") or []
        for link in links:
            assert link["url"].startswith(self.fhir + "/") or link["url"] == self.fhir, link
            if link.get("relation") != "self":
                assert PAGE_LINK.search(link["url"]), f"not a sealed paging link: {link}"
        for entry in bundle.get("entry") or []:
            if "fullUrl" in entry:
                assert entry["fullUrl"].startswith(self.fhir + "/"), entry["fullUrl"]
        if "total" not in bundle:
            return
        total = bundle["total"]
        matches = sum(
            1
            for e in bundle.get("entry") or []
            if (e.get("search") or {}).get("mode", "match") == "match"
        )
        paged = any(link.get("relation") in ("next", "previous", "prev") for link in links)
        if at_most is not None:
            assert total <= at_most, f"total {total} counts more than the {at_most} released"
        if not paged and "_summary=count" not in reply.sent:
            assert total == matches, f"total {total} but {matches} released matches"
