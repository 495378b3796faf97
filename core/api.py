"""API plumbing shared by every app: the one exception handler and strict input serializers.

Every error leaves the API as {"error": {"code", "message", "detail"}} with a 4xx status for
anything the client sent; a 5xx only for our own faults, and then without internals.
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, serializers
from rest_framework.response import Response

from core import context
from core.errors import DomainError

log = logging.getLogger(__name__)

_DRF_CODES = {
    exceptions.ParseError: "malformed_json",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
    exceptions.ValidationError: "invalid",
    exceptions.PermissionDenied: "forbidden",
}


def error_body(code: str, message: str, detail: object = None) -> dict:
    return {"error": {"code": code, "message": message, "detail": detail, "request_id": context.request_id.get()}}


def _first_message(detail, path: str = "") -> str:
    """The first validation message, prefixed with the field path it belongs to."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            sub = path if key in ("non_field_errors",) else (f"{path}.{key}" if path else str(key))
            return _first_message(value, sub)
    if isinstance(detail, list) and detail:
        for index, value in enumerate(detail):
            if value in ({}, [], ""):
                continue
            sub = path if not isinstance(value, dict | list) else f"{path}[{index}]"
            return _first_message(value, sub)
    return f"{path}: {detail}" if path else str(detail)


def exception_handler(exc, ctx):
    headers = {}
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.detail), status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        return Response(error_body("payload_too_large", "Request body is too large."), status=413)

    if isinstance(exc, exceptions.APIException):
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        code = getattr(exc, "error_code", None) or next(
            (c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), exc.default_code
        )
        if isinstance(exc, exceptions.ValidationError):
            message = "Invalid input. " + _first_message(exc.detail)
            detail = exc.detail
        elif isinstance(exc, exceptions.ParseError):
            message = f"Request body is not valid JSON: {exc.detail}"
            detail = None
        else:
            message, detail = str(exc.detail), None
        return Response(error_body(code, message, detail), status=exc.status_code, headers=headers)

    log.exception("Unhandled error in %s", ctx.get("view").__class__.__name__ if ctx else "?")
    return Response(
        error_body("internal_error", "Internal server error. Quote the request id when reporting it."),
        status=500,
    )


class SharedFields:
    """Fields built and bound once per serializer class, on a prototype instance, and shared by every instance:
    DRF builds, deep-copies and binds them per instance (about 0.4 ms per response, a tenth of a registration's
    CPU for its nested input). Validating or representing reads them but never changes them, so one set serves
    every request and thread. The price: a field, a nested serializer's methods and a `get_<field>` method see
    the prototype as their parent, so they must not read per-instance state (`self.context`, `self.instance`,
    `self.root`, `partial`); the serializer's own `validate_<field>`/`validate` run on the real instance. So
    `partial` and `context`, which the shared fields could not see, are refused rather than ignored."""

    def __init__(self, *args, **kwargs):
        refused = [name for name in ("partial", "context") if kwargs.get(name)]
        if refused:
            raise TypeError(
                f"{type(self).__name__} shares its fields per class (core.api.SharedFields), which cannot see "
                f"{' or '.join(refused)}: validate the parts in the view, or give the serializer its own fields."
            )
        super().__init__(*args, **kwargs)

    @property
    def fields(self):
        cls = type(self)
        if "_shared_fields" not in cls.__dict__:
            cls._shared_fields = serializers.Serializer.fields.func(cls())
        return cls._shared_fields


class OutputModelSerializer(SharedFields, serializers.ModelSerializer):
    """A ModelSerializer for responses, with fields shared per class (SharedFields)."""


class StrictSerializer(SharedFields, serializers.Serializer):
    """Input serializer that rejects fields it does not know, naming them; fields shared per class (SharedFields)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: ["Unknown field. Allowed: " + ", ".join(sorted(self.fields)) + "."] for name in unknown}
                )
        return super().to_internal_value(data)


class UUIDString(serializers.UUIDField):
    """A UUID as the schema says, a string: DRF's UUIDField also takes a JSON number as the UUID's integer, so
    `true` became 00000000-0000-0000-0000-000000000001 and `7` another run that nobody named."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)
