"""The typed keys of per-request state that the web plumbing reads (aiohttp ``RequestKey``).

The application's keys (``web.AppKey``) are all in :mod:`gateway.appkeys`, which sits above every
package because it names their types; these sit here, below the FHIR API and the
authorization server that set them, so that neither has to import the top of the application.
"""

from __future__ import annotations

from aiohttp import web

REQUEST_ID = web.RequestKey("request_id", str)
"""The request's id: in every log line and in ``X-Request-Id``."""
METRIC_LABEL = web.RequestKey("metric_label", str)
"""The interaction kind (``read``, ``token``...) the request is counted under in ``/metrics``."""
CLIENT_ID = web.RequestKey("client_id", str)
"""The SMART client the request's token belongs to, once known (for CORS)."""
LOG_PATH = web.RequestKey("log_path", str)
"""The request's path as the access log writes it (no ids), where its handler knows better than
the route it matched (the FHIR API: ``/fhir/Patient/{id}``)."""
CALLER = web.RequestKey("caller", str)
"""The caller's address as a trusted proxy reported it (:mod:`gateway.web.forwarded`)."""
FORWARDED_HTTPS = web.RequestKey("forwarded_https", bool)
"""Whether a trusted proxy reported that the caller used https."""
