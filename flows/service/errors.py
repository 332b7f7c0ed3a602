"""Every error leaves the service in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

OpenAI's clients map the status to an exception class (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 413/415 APIStatusError, 429 RateLimitError, 5xx
InternalServerError) and show ``message``; ``param`` names the offending field.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered to the client as-is (status, OpenAI error body, optional headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _param_of(loc: tuple) -> str | None:
    # FastAPI locations look like ("body", "n") or ("body",) or ("query", "x"); the first element
    # names where the value came from, the rest is the field path.
    parts = [str(p) for p in loc[1:] if not isinstance(p, int)] if loc else []
    return ".".join(parts) or None


def _validation_message(first: dict, param: str | None) -> str:
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing" and param is None:
        return "The request body is empty or null; send a JSON object with the request's fields."
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'."
    if first.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}"
    if first.get("type") in ("json_invalid", "model_attributes_type", "dict_type") or param is None:
        return f"The request body is not valid JSON of the expected shape: {msg}."
    value = first.get("input")
    shown = repr(value) if value is not None and not isinstance(value, dict | list) else "the given value"
    return f"Invalid value for '{param}': {shown} — {msg}."


async def _on_api_error(request: Request, err: APIError) -> JSONResponse:
    return error_response(err)


async def _on_validation(request: Request, err: RequestValidationError) -> JSONResponse:
    errors = err.errors()
    first = errors[0] if errors else {}
    param = _param_of(tuple(first.get("loc", ())))
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return error_response(APIError(400, _validation_message(first, param), param=param, code=code))


_STATUS_TYPES = {401: "authentication_error", 404: "invalid_request_error", 405: "invalid_request_error"}


async def _on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
    message = err.detail if isinstance(err.detail, str) else "request failed"
    if err.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    elif err.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    kind = _STATUS_TYPES.get(err.status_code, "invalid_request_error" if err.status_code < 500 else "server_error")
    return error_response(APIError(err.status_code, message, type=kind, headers=dict(err.headers or {})))


async def _on_unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error serving %s %s", request.method, request.url.path)
    return error_response(
        APIError(500, "The server had an error while processing your request; it has been logged.",
                 type="server_error", code="internal_error")
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
