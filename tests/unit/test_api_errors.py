"""API errors in logs and messages: one line with the server's code, reason and message."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError
from urllib3.response import HTTPResponse

from aos_operator.api.client import error_text, status_error


def answer(status: int, reason: str, body: bytes, headers: dict[str, str] | None = None) -> ApiException:
    """The exception the kubernetes client raises for this HTTP answer (it reads the body first)."""
    response = RESTResponse(HTTPResponse(body=body, headers=headers or {}, status=status, reason=reason))
    response.read()
    return ApiException(http_resp=response)


def test_a_status_answer_gives_its_message_and_retry_after() -> None:
    body = json.dumps({"kind": "Status", "status": "Failure", "message": "storage is (re)initializing",
                       "reason": "TooManyRequests", "details": {"retryAfterSeconds": 1}, "code": 429}).encode()
    error = answer(429, "Too Many Requests", body, {"Retry-After": "1", "Audit-Id": "b929"})
    assert "HTTP response headers" in str(error)  # what was logged before
    assert error_text(error) == "429 Too Many Requests: storage is (re)initializing (retry after 1 s)"


def test_a_body_that_is_not_json_is_kept_on_one_line_and_bounded() -> None:
    error = answer(502, "Bad Gateway", b"<html>\n<body>proxy\nerror</body>\n</html>" + b"x" * 2000)
    text = error_text(error)
    assert text.startswith("502 Bad Gateway: <html> <body>proxy error</body>")
    assert "\n" not in text and len(text) <= 600


def test_a_watch_error_event_names_its_code_and_message() -> None:
    event = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
             "message": "too old resource version: 12 (3456)"}
    error = status_error(event)
    assert error.status == 410
    assert error_text(error) == "410 Expired: too old resource version: 12 (3456)"
    assert error_text(status_error("not a Status")) == "500 Error: not a Status"


def test_the_kubernetes_watchs_own_error_and_connection_errors_read_as_one_line() -> None:
    assert error_text(ApiException(status=410, reason="Expired: too old resource version")) == \
        "410 Expired: too old resource version"
    assert error_text(ProtocolError("Response ended prematurely")) == "ProtocolError: Response ended prematurely"
    assert error_text(ConnectionRefusedError(111, "Connection refused")) == \
        "ConnectionRefusedError: [Errno 111] Connection refused"
    assert error_text(ApiException()) == "the API server refused the request"


def test_a_long_connection_error_keeps_its_cause() -> None:
    url = "/apis/coordination.k8s.io/v1/namespaces/aos-system/leases/" + "sim-" * 60
    error = MaxRetryError(None, url, reason=NewConnectionError(None, "[Errno 111] Connection refused"))  # type: ignore[arg-type]
    text = error_text(error)
    assert len(text) <= 300 and text.startswith("MaxRetryError: ") and text.endswith("Connection refused'))")
