"""Plain request and response values for Authlib's server core, and the bridge its synchronous hooks
use to reach the asynchronous stores.

Authlib's :class:`AuthorizationServer` is synchronous. The web layer reads an HTTP request fully
(query, form, headers) into a :class:`PlainRequest`, runs the Authlib call in a worker thread, and
turns the :class:`AuthResponse` it gets back into an HTTP response. Inside the worker thread, a hook
that needs MongoDB calls :meth:`Bridge.run`, which schedules the coroutine on the application's
event loop and waits for it — so the thread waits, the event loop never does.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.requests import OAuth2Payload

T = TypeVar("T")

BRIDGE_TIMEOUT_SECONDS = 30.0


class Bridge:
    """Runs coroutines on ``loop`` on behalf of a worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("Bridge.run was called on the event loop; use a worker thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(BRIDGE_TIMEOUT_SECONDS)


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        lists: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in items:
            lists[key].append(value)
        self._lists = lists
        self._data = {key: values[0] for key, values in lists.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._lists


class PlainRequest(OAuth2Request):  # type: ignore[misc]
    """An HTTP request already read: method, absolute URI, headers, query and form pairs."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: dict[str, str],
        query: Iterable[tuple[str, str]] = (),
        form: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(method, uri, headers=headers)
        query_items = [(str(k), str(v)) for k, v in query]
        form_items = [(str(k), str(v)) for k, v in form]
        self._query = _Payload(query_items)
        self._form = _Payload(form_items)
        # The authorization endpoint reads parameters from the query (GET) or the form (POST).
        self.payload = _Payload(query_items + form_items)

    @property
    def args(self) -> dict[str, str]:
        return self._query.data

    @property
    def form(self) -> dict[str, str]:
        return self._form.data


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """What Authlib answered: a status, a JSON body (or empty) and headers."""

    status: int
    body: dict[str, Any] | str
    headers: tuple[tuple[str, str], ...]

    @property
    def location(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "location"), None)
