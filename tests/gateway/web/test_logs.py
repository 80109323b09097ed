"""P-14: the redaction every log record passes (``gateway/web/logs.py``) — the message with its
arguments, the exception text — and its place on other libraries' loggers."""

from __future__ import annotations

import logging

import pytest

from gateway.web.logs import REDACTED_LOGGERS, Redaction, configure_logging, redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwYXQtMSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("text", "kept", "removed"),
    [
        (f"b'GET /fhir/Patient?access_token={JWT}&x=\\xff HTTP/1.1'", "/fhir/Patient", "access"),
        ("GET /fhir/Observation?patient=pat-1&_count=2 HTTP/1.1", "/fhir/Observation", "pat-1"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz', 'Host': 'x'}", "'Host': 'x'", "dXNlcjpwYXNz"),
        ("Cookie: fg_session=abc123\r\nHost: x", "Host: x", "abc123"),
        ('headers={"authorization": "Bearer opaque-token"}', "headers=", "opaque-token"),
        ("sent Bearer opaque.token.value upstream", "upstream", "opaque.token"),
        (f"token {JWT} in prose", "in prose", JWT.split(".")[1]),
        ("what? nothing to remove here", "what? nothing to remove here", "[removed]"),
    ],
)
def test_p14_redact_removes_queries_tokens_and_credentials(
    text: str, kept: str, removed: str
) -> None:
    out = redact(text)
    assert kept in out and removed not in out, out


def test_p14_a_record_is_redacted_whole(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.redaction")
    logger.addFilter(Redaction())
    try:
        with caplog.at_level(logging.INFO, logger="tests.redaction"):
            logger.info("%s asked %s", "127.0.0.1", f"/fhir/Patient?access_token={JWT}")
            try:
                raise ValueError(f"bad line: GET /x?patient=pat-1 Authorization: Bearer {JWT}")
            except ValueError:
                logger.exception("failed with %r", {"Cookie": "fg_session=secret"})
    finally:
        logger.filters.clear()
    text = caplog.text
    assert "/fhir/Patient" in text and "ValueError" in text
    for secret in (JWT, "access_token", "pat-1", "fg_session", "secret"):
        assert secret not in text, secret


def test_p14_aiohttps_loggers_are_redacted_for_every_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records of aiohttp's own loggers are rewritten before any handler sees them (here
    pytest's), not only the gateway's own handler's copy."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    filters = {name: logging.getLogger(name).filters[:] for name in REDACTED_LOGGERS}
    try:
        configure_logging("INFO")
        root.addHandler(caplog.handler)
        logging.getLogger("aiohttp.server").error(
            "Error handling request", exc_info=ValueError(f"b'GET /?access_token={JWT}'")
        )
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, kept in filters.items():
            logging.getLogger(name).filters[:] = kept
    assert "Error handling request" in caplog.text
    assert JWT not in caplog.text and "access_token" not in caplog.text
