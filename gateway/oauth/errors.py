"""Errors of the authorization server and the one middleware that renders them.

::

    authlib OAuth2Error                 RFC 6749 5.2 JSON ({"error", "error_description"}),
     ├── InvalidClientError   401        or, at the authorization endpoint once the redirect URI
     ├── InvalidGrantError    400        is known to be registered, a redirect carrying ``error``
     ├── InvalidRequestError  400        and ``state`` (RFC 6749 4.1.2.1); before that, a page
     └── ... (Authlib's tree)            (S-11: never redirect to an unchecked URI)
    AuditUnavailable                    503: a page, or {"error": "temporarily_unavailable"}
    PageError                           a readable HTML page
     ├── BadPage              400        (expired or tampered form, unknown flow)
     ├── NotSignedIn          401
     └── NotAllowed           403
    ApiError                            JSON {"error", "error_description"} (admin and launch APIs)

Under ``/auth``, ``/admin``, ``/account`` and the well-known documents nothing else renders errors:
no stack trace, no 500 for a client's mistake; a database that does not answer is a 503, any other
unexpected failure a 500 page or JSON naming the request id (P-14). Everything else, and any FHIR
error, is left to the FHIR error middleware.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Error
from pymongo.errors import PyMongoError

from gateway.audit.errors import AuditUnavailable
from gateway.oauth.adapter import NO_STORE
from gateway.oauth.rendering import render
from gateway.web.errors import FhirError
from gateway.web.requestkeys import REQUEST_ID

log = logging.getLogger(__name__)

PREFIXES = ("/auth", "/admin", "/account", "/.well-known", "/fhir/.well-known")
_PAGE_PATHS = (
    "/auth/authorize",
    "/auth/login",
    "/auth/mfa",
    "/auth/patient",
    "/auth/consent",
    "/auth/logout",
    "/auth/signed-in",
    "/account",
)


class PageError(Exception):
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Something went wrong"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadPage(PageError):
    status = 400
    title = "This page cannot be used"


class NotSignedIn(PageError):
    status = 401
    title = "Please sign in"


class NotAllowed(PageError):
    status = 403
    title = "Not allowed"


class ApiError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def _is_page(request: web.Request) -> bool:
    return request.path.startswith(_PAGE_PATHS)


def _json(status: int, body: dict[str, str], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


def oauth_error_response(request: web.Request, error: OAuth2Error) -> web.Response:
    if error.redirect_uri:
        location = add_params_to_uri(error.redirect_uri, error.get_body(), False)
        return web.Response(status=302, headers={"Location": location, **NO_STORE})
    if request.path.startswith("/auth/authorize"):
        return render(
            "error.html",
            400,
            title="The app's request cannot be accepted",
            message=error.get_error_description() or error.error,
            detail=error.error,
        )
    status = 401 if isinstance(error, InvalidClientError) else int(error.status_code or 400)
    body = {"error": str(error.error)}
    if error.description:
        body["error_description"] = str(error.description)
    headers = {} if status != 401 else {"WWW-Authenticate": 'Basic realm="token"'}
    return _json(status, body, headers)


def _unexpected(request: web.Request) -> web.Response:
    request_id = request.get(REQUEST_ID, "-")
    if _is_page(request):
        return render(
            "error.html",
            500,
            title="Something went wrong on our side",
            message=f"Please try again in a moment. Request id {request_id}.",
            detail="",
        )
    return _json(500, {"error": "server_error", "error_description": f"request id {request_id}"})


def _unavailable(request: web.Request, why: str) -> web.Response:
    """503: what the gateway could not do now (``why``), and that it was not done."""
    if _is_page(request):
        return render(
            "error.html",
            503,
            title="Please try again in a moment",
            message=f"{why[:1].upper()}{why[1:]}, so nothing was done. Please try again shortly.",
            detail="",
        )
    body = {"error": "temporarily_unavailable", "error_description": f"{why}; try again"}
    return _json(503, body, {"Retry-After": "5"})


@web.middleware
async def auth_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(PREFIXES):
        return await handler(request)
    try:
        return await handler(request)
    except OAuth2Error as error:
        return oauth_error_response(request, error)
    except PageError as error:
        return render(
            "error.html", error.status, title=error.title, message=error.message, detail=""
        )
    except ApiError as error:
        return _json(error.status, {"error": error.error, "error_description": error.description})
    except AuditUnavailable:  # what cannot be recorded is not done
        return _unavailable(request, "the audit trail cannot be written")
    except FhirError:
        raise  # the FHIR API's own answer (gateway.web.middleware renders it)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if _is_page(request):
            return render("error.html", exc.status, title=exc.reason, message=exc.reason, detail="")
        return _json(exc.status, {"error": "invalid_request", "error_description": exc.reason})
    except PyMongoError as exc:  # slow or gone (timeoutMS, server selection)
        log.warning("the database did not answer: %s", type(exc).__name__)
        return _unavailable(request, "the database did not answer")
    except Exception:
        log.exception("unexpected error while handling %s %s", request.method, request.path)
        return _unexpected(request)
