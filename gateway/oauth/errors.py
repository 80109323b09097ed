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
from gateway.pages.i18n import N_
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
    """A page's error, for people: ``message`` is the English id of the message catalogue, with
    ``%(name)s`` placeholders filled from ``params`` once translated (the extractor finds the
    messages of these classes by their names: ``babel.cfg``)."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = N_("Something went wrong")

    def __init__(self, message: str, **params: str) -> None:
        super().__init__(message)
        self.message = message
        self.params = params


class BadPage(PageError):
    status = 400
    title = N_("This page cannot be used")


class NotSignedIn(PageError):
    status = 401
    title = N_("Please sign in")


class NotAllowed(PageError):
    status = 403
    title = N_("Not allowed")


class ApiError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


_HTTP_PAGES = {
    400: (N_("This page cannot be used"), N_("The request was not understood.")),
    404: (N_("This page does not exist"), N_("Check the address, or go back and try again.")),
    405: (N_("This page cannot be used"), N_("This page cannot be opened this way.")),
    413: (N_("This page cannot be used"), N_("What was sent is too large.")),
}


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
        description = error.get_error_description()
        return render(
            request,
            "error.html",
            400,
            title=N_("The app's request cannot be accepted"),
            message=N_(
                "The app sent a request that cannot be accepted. Go back to the app and try again."
            ),
            params={},
            detail=f"{error.error}: {description}" if description else str(error.error),
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
            request,
            "error.html",
            500,
            title=N_("Something went wrong on our side"),
            message=N_("Please try again in a moment. Request id %(request_id)s."),
            params={"request_id": str(request_id)},
            detail="",
        )
    return _json(500, {"error": "server_error", "error_description": f"request id {request_id}"})


def _unavailable(request: web.Request, why: str) -> web.Response:
    """503: what the gateway could not do now (``why``, in the JSON answer and as the page's
    error code), and that it was not done."""
    if _is_page(request):
        return render(
            request,
            "error.html",
            503,
            title=N_("Please try again in a moment"),
            message=N_(
                "Something this needs could not be reached, so nothing was done. "
                "Please try again shortly."
            ),
            params={},
            detail=why,
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
            request,
            "error.html",
            error.status,
            title=error.title,
            message=error.message,
            params=error.params,
            detail="",
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
            title, message = _HTTP_PAGES.get(exc.status, _HTTP_PAGES[400])
            return render(
                request,
                "error.html",
                exc.status,
                title=title,
                message=message,
                params={},
                detail=str(exc.status),
            )
        return _json(exc.status, {"error": "invalid_request", "error_description": exc.reason})
    except PyMongoError as exc:  # slow or gone (timeoutMS, server selection)
        log.warning("the database did not answer: %s", type(exc).__name__)
        return _unavailable(request, "the database did not answer")
    except Exception:
        log.exception("unexpected error while handling %s %s", request.method, request.path)
        return _unexpected(request)
