"""Google API failures -> the design card's error codes (and its error table's responses).

| what Google answers                                   | code    | response (cluster.engine.retry)       |
|-------------------------------------------------------|---------|--------------------------------|
| 429 RESOURCE_EXHAUSTED                                | IMG_006 | backoff with jitter, same model |
| 401, 403, 400 with reason API_KEY_INVALID              | IMG_007 | no retry, the run fails fast    |
| 404 (model retired or unknown)                        | IMG_002 | fallback model                 |
| timeout, connection refused/reset, 5xx                | IMG_008 | retry with a shorter timeout    |
| any other 4xx (e.g. a prompt the API rejects)         | IMG_020 | fallback model                 |

The API key never appears in a message: every text is passed through `redact`.
"""

from __future__ import annotations

from collections.abc import Callable

from cluster.errors import ImageGenError

AUTH_REASONS = {"API_KEY_INVALID", "API_KEY_EXPIRED", "ACCESS_TOKEN_EXPIRED", "ACCESS_TOKEN_TYPE_UNSUPPORTED",
                "CREDENTIALS_MISSING", "SERVICE_DISABLED", "IAM_PERMISSION_DENIED"}


def error_reasons(body) -> set[str]:
    """`reason` fields of the google.rpc.ErrorInfo entries in an error response body."""
    if isinstance(body, list) and body:  # some endpoints wrap the error in a list
        body = body[0]
    if not isinstance(body, dict):
        return set()
    error = body.get("error", body)
    items = error.get("details", []) if isinstance(error, dict) else []
    return {str(item["reason"]) for item in items if isinstance(item, dict) and item.get("reason")}


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_timeout(exc: BaseException) -> bool:
    for item in _chain(exc):
        if isinstance(item, TimeoutError):
            return True
        if any("Timeout" in cls.__name__ for cls in type(item).__mro__):
            return True
    return False


def is_connection_error(exc: BaseException) -> bool:
    for item in _chain(exc):
        if isinstance(item, ConnectionError):
            return True
        names = {cls.__name__ for cls in type(item).__mro__}
        if names & {"ConnectError", "RemoteProtocolError", "ReadError", "WriteError", "NetworkError",
                    "TransportError", "ProtocolError"}:
            return True
    return False


def classify(exc: BaseException, model: str, redact: Callable[[str], str], budget_hit: bool = False) -> ImageGenError:
    """The ImageGenError for any exception raised by a google-genai call."""
    from google.genai import errors as genai_errors

    if isinstance(exc, ImageGenError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        status = exc.status or ""
        text = redact(f"{model}: HTTP {exc.code} {status}: {exc.message or ''}".strip())
        reasons = error_reasons(exc.details)
        if exc.code == 429 or status == "RESOURCE_EXHAUSTED":
            return ImageGenError("IMG_006", text, retryable=True)
        if exc.code in (401, 403) or reasons & AUTH_REASONS or status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return ImageGenError("IMG_007", text + " — check GOOGLE_API_KEY or the Application Default Credentials.")
        if exc.code == 404 or status == "NOT_FOUND":
            return ImageGenError("IMG_002", text + " — the model is not available (retired or not enabled).")
        if exc.code is not None and exc.code >= 500:
            return ImageGenError("IMG_008", text, retryable=True)
        return ImageGenError("IMG_020", text)
    if is_timeout(exc):
        if budget_hit:
            return ImageGenError("IMG_003", f"{model}: the request ran out of the image's timeout_per_image")
        return ImageGenError("IMG_008", f"{model}: request timed out", retryable=True)
    if is_connection_error(exc):
        return ImageGenError("IMG_008", redact(f"{model}: connection failed: {type(exc).__name__}: {exc}"), retryable=True)
    return ImageGenError("IMG_020", redact(f"{model}: {type(exc).__name__}: {exc}"))
