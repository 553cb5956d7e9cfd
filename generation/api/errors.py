"""The API's one error shape, and the one exception handler that produces it.

Every error answers ``{"error": {"code": …, "message": …, "fields": {"<field path>": ["…"]}}}``;
``code`` is stable (clients match on it), ``fields`` names the input at fault with the same
paths as the workflows' parameter definitions (``sampler_params.steps``, ``lora_models.0.name``) and is
``{}`` when no field is to blame. Wired as ``REST_FRAMEWORK["EXCEPTION_HANDLER"]``.
"""

import math

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from generation.errors import GenerationError, ParamsInvalid


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


# DRF exception → stable code (DRF's own default_code where it is already a good name)
_CODES = {
    exceptions.ParseError: "parse_error",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
    exceptions.ValidationError: "invalid",
}


def flatten_errors(detail, prefix=""):
    """DRF's nested error detail → ``{"a.b.0.c": ["message", …]}`` (``non_field_errors`` at the top)."""
    fields = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key in ("non_field_errors", "detail") and prefix:
                name = prefix
            for path, messages in flatten_errors(value, name).items():
                fields.setdefault(path, []).extend(messages)
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            if detail:
                fields[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, value in enumerate(detail):
                if value in ({}, []):
                    continue
                path = f"{prefix}.{index}" if prefix else str(index)
                for name, messages in flatten_errors(value, path).items():
                    fields.setdefault(name, []).extend(messages)
    else:
        fields[prefix or "non_field_errors"] = [str(detail)]
    return fields


ECHO_LIMIT = 300


def shorten(message, limit=ECHO_LIMIT):
    """``message`` cut in the middle past ``limit`` characters: messages quote what was sent
    ("'…' is not an available checkpoint."), and a 100,000-character input must not come back whole."""
    message = str(message)
    if len(message) <= limit:
        return message
    tail = limit // 4
    return f"{message[:limit - tail - 1]}…{message[-tail:]}"


def error_body(*, code, message, fields=None):
    return {"error": {"code": code, "message": shorten(message),
                      "fields": {shorten(name, 200): [shorten(text) for text in texts]
                                 for name, texts in (fields or {}).items()}}}


def _api_exception_response(exc):
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if isinstance(exc, exceptions.Throttled):
        headers["Retry-After"] = str(max(1, math.ceil(exc.wait or 1)))
    code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), None) or exc.default_code
    if isinstance(exc, exceptions.ValidationError):
        body = error_body(code=code, message="The request is invalid.", fields=flatten_errors(exc.detail))
    elif isinstance(exc, exceptions.Throttled):
        body = error_body(code=code, message=f"Too many requests; try again in {headers['Retry-After']} seconds.")
    else:
        detail = exc.detail
        message = detail if isinstance(detail, str) else exc.default_detail
        body = error_body(code=code, message=message, fields=flatten_errors(detail) if isinstance(
            detail, (dict, list)) else None)
    return Response(body, status=exc.status_code, headers=headers)


def exception_handler(exc, context):
    """Turn any error a view can raise into the stable error JSON; ``None`` (→ 500) only for bugs."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    elif isinstance(exc, SuspiciousOperation):
        exc = exceptions.ParseError("The request could not be understood.")

    if isinstance(exc, ParamsInvalid):
        set_rollback()
        return Response(error_body(code=exc.code, message=exc.message, fields=exc.fields), status=exc.status)
    if isinstance(exc, GenerationError):
        set_rollback()
        headers = {}
        if getattr(exc, "retry_after", None):  # TooManyActiveRequests, LoginLocked
            headers["Retry-After"] = str(exc.retry_after)
        return Response(error_body(code=exc.code, message=exc.message, fields=getattr(exc, "fields", None)),
                        status=exc.status, headers=headers)
    if isinstance(exc, exceptions.APIException):
        set_rollback()
        return _api_exception_response(exc)
    return None
