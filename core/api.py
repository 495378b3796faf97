"""API plumbing shared by every app: the one exception handler, strict input serializers, the base view every API
view derives from (it takes only the query parameters it declares) and the URL helper for the optional trailing slash.

Every error leaves the API as {"error": {"code", "message", "detail"}} with a 4xx status for
anything the client sent; a 5xx only for our own faults, and then without internals.
"""

import functools
import inspect
import logging
from datetime import datetime

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from django.urls import URLResolver, path, re_path, reverse
from django.urls.resolvers import RoutePattern
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, serializers, views
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response

from core import context, etags, openapi
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


def location(view_name: str, query: str = "", **kwargs) -> str:
    """A 201's Location header (RFC 9110, 10.2.2): the path the new resource is read at."""
    return reverse(view_name, kwargs=kwargs) + query


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
        return _request_data_too_big()

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


def _request_data_too_big() -> Response:
    """Django's own limit, on a body read whole through `request.body` or `request.POST` (the web forms). The
    API's parsers read the stream under limits of their own (core.parsers), so only a view that reads the body
    itself meets this one."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    message = (
        f"Request body is larger than {limit} bytes, the limit on a body read whole (DATA_UPLOAD_MAX_MEMORY_SIZE). "
        f"Send less; JSON bodies (Content-Type: application/json) may be up to {settings.MAX_JSON_BODY_BYTES} bytes."
    )
    return Response(error_body("payload_too_large", message, {"limit_bytes": limit}), status=413)


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


class OffsetDateTimeField(serializers.DateTimeField):
    """A time a client sends, which must name its offset from UTC (RFC 3339): DRF reads one without an offset as
    UTC, so a CI runner's local ?created_after=2026-12-07T23:00:00 (or a bare date) was silently hours off."""

    NO_OFFSET = (
        "Give the time's offset from UTC: add Z (UTC) or ±HH:MM, e.g. 2026-12-07T23:00:00Z or "
        "2026-12-07T23:00:00-05:00 (a time without one is not read as anyone's local time)."
    )
    # "+" in a query string is form-encoding for a space: 23:00:00+01:00 arrives as "23:00:00 01:00".
    PLUS_AS_SPACE = " A '+' in a query string arrives as a space: percent-encode it as %2B (23:00:00%2B01:00)."

    def to_internal_value(self, value):
        spaced = isinstance(value, str) and " " in value
        try:
            if isinstance(value, datetime) and timezone.is_naive(value):
                raise serializers.ValidationError(self.NO_OFFSET)
            parsed = super().to_internal_value(value)
            as_given = parse_datetime(value) if isinstance(value, str) else None  # as DRF parsed it (ISO 8601)
            if as_given is not None and timezone.is_naive(as_given):
                raise serializers.ValidationError(self.NO_OFFSET)
        except serializers.ValidationError as exc:
            if spaced:
                raise serializers.ValidationError([message + self.PLUS_AS_SPACE for message in exc.detail]) from None
            raise
        return parsed


class StrictSerializer(SharedFields, serializers.Serializer):
    """Input serializer that rejects fields it does not know, naming them; fields shared per class (SharedFields).
    Its DateTimeFields are OffsetDateTimeFields: a time sent without its offset from UTC is a 400, in one place for
    every query serializer (and every page or command that reads a time through one)."""

    def get_fields(self):
        fields = super().get_fields()
        for name, field in fields.items():
            if type(field) is serializers.DateTimeField:
                fields[name] = OffsetDateTimeField(*field._args, **field._kwargs)  # as declared (DRF keeps them)
        return fields

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


# --- the shared base view: query parameters ------------------------------------------------------------------


def pagination_parameters(pagination_class) -> list[OpenApiParameter]:
    """The query parameters of a cursor-paginated list (core.pagination.Cursor)."""
    return [
        OpenApiParameter(
            pagination_class.cursor_query_param, str, description="the opaque cursor of a next or previous link"
        ),
        OpenApiParameter(
            pagination_class.page_size_query_param,
            {"type": "integer", "minimum": 1, "maximum": pagination_class.max_page_size},
            description=f"items per page (default {pagination_class.page_size})",
        ),
    ]


@functools.cache
def _declared_query(view_class: type, method: str) -> tuple[list, frozenset[str], frozenset[str]]:
    """What `view_class` declares it takes in the query string of `method`: the OpenAPI parameters (for the schema),
    their names (for the check) and the names of those that take several values (a ListField: ?tag=a&tag=b)."""
    declared = []
    pagination_class = getattr(view_class, "pagination_class", None)
    if method == "GET" and pagination_class is not None:
        declared += pagination_parameters(pagination_class)
    serializer_class = view_class.query_serializers.get(method)
    if serializer_class is not None:
        declared.append(serializer_class)
    names, many = set(), set()
    for item in declared:
        if isinstance(item, OpenApiParameter):
            names.add(item.name)
            continue
        for name, field in item().fields.items():
            if not field.read_only:
                names.add(name)
                if isinstance(field, serializers.ListField):
                    many.add(name)
    return declared, frozenset(names), frozenset(many)


class QuerySchema(AutoSchema):
    """drf-spectacular's AutoSchema, documenting the query parameters the view declares (BaseAPIView), the 406 of a
    view that negotiates its response's media type, and only the view's own docstrings as descriptions."""

    def get_override_parameters(self):
        return super().get_override_parameters() + _declared_query(type(self.view), self.method)[0]

    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        # DRF's negotiation answers an Accept it cannot meet (application/xml) with 406; a view that picks its media
        # type otherwise (the audit and lineage exports, by `format`) never does. core.openapi adds the error body.
        if operation is not None and issubclass(self.view.content_negotiation_class, DefaultContentNegotiation):
            operation["responses"].setdefault("406", {"description": openapi.DESCRIPTIONS["406"]})
        return operation

    def get_description(self) -> str:
        """The handler's own docstring, else the view class's own: never one inherited (drf-spectacular walks the
        bases, so operations were described by BaseAPIView's, GovernedAPIView's or ModelScopedView's notes for
        developers). extend_schema(description=...) still wins."""
        if spectacular_settings.DISABLE_DOCSTRING_DESCRIPTIONS:
            return ""
        handler = getattr(self.view, getattr(self.view, "action", self.method.lower()), None)
        for doc in (getattr(handler, "__doc__", None), type(self.view).__dict__.get("__doc__")):
            if doc:
                return "\n".join(line.rstrip() for line in inspect.cleandoc(doc).rstrip().split("\n"))
        return ""


class BaseAPIView(views.APIView):
    """Base of every API view. It takes only the query parameters it declares, for the schema and for the check alike:
    `query_serializers` maps an HTTP method to the serializer whose fields are its query parameters, and a view with
    a `pagination_class` also takes that paginator's cursor and page_size on GET. Any other query parameter is a
    400 naming it (a typo such as ?fromat= must not be ignored), after authentication and permissions; so is one
    given twice that takes one value (?status=a&status=b: which one was meant?), only a ListField taking several."""

    query_serializers: dict[str, type[serializers.Serializer]] = {}
    schema = QuerySchema()
    # The ETag this view's GET sends changes whenever the object's state in the body does (not only what a write
    # may change; a user's name shown for created_by aside): a GET or HEAD naming it in If-None-Match is then a 304
    # (core.etags.not_modified_if_unchanged).
    etag_validates_body = False

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        _, accepted, many = _declared_query(type(self), self._query_method())
        params = request.query_params
        unknown = sorted(set(params) - accepted)
        if unknown:
            allowed = f"Allowed: {', '.join(sorted(accepted))}." if accepted else "This operation takes none."
            raise exceptions.ValidationError({name: [f"Unknown query parameter. {allowed}"] for name in unknown})
        repeated = {name: len(params.getlist(name)) for name in sorted(set(params) - many)}
        repeated = {name: times for name, times in repeated.items() if times > 1}
        if repeated:
            message = "Given {} times; it takes one value: send it once" + (
                f" ({', '.join(sorted(many))} may be repeated)." if many else "."
            )
            raise exceptions.ValidationError({name: [message.format(times)] for name, times in repeated.items()})

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        return etags.not_modified_if_unchanged(request, response) if self.etag_validates_body else response

    def _query_method(self) -> str:
        return "GET" if self.request.method == "HEAD" else self.request.method

    def query(self) -> dict:
        """The request's query, validated by the method's declared serializer (a ListField takes every value given;
        any other parameter was given once, as `initial` checked)."""
        method = self._query_method()
        serializer_class = self.query_serializers[method]
        params = self.request.query_params
        many = _declared_query(type(self), method)[2]
        data = {key: params.getlist(key) if key in many else params[key] for key in params}
        query = serializer_class(data=data)
        query.is_valid(raise_exception=True)
        return query.validated_data


# --- URLs -----------------------------------------------------------------------------------------------------


def slash_optional(patterns: list) -> list:
    """`patterns` (and the URL confs they include), each route also answering with its trailing slash toggled.

    The route as written stays the canonical spelling, the one the OpenAPI schema lists and reverse() gives: the
    other spelling is an extra pattern of the same name, left out of the schema (schema=None) and placed before
    it, as reverse() takes the last pattern of a name. A regex route ending in /?$ already takes both."""
    result = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            result.append(
                URLResolver(
                    pattern.pattern,
                    slash_optional(pattern.url_patterns),
                    pattern.default_kwargs,
                    pattern.app_name,
                    pattern.namespace,
                )
            )
            continue
        other = _other_spelling(pattern)
        if other is not None:
            result.append(other)
        result.append(pattern)
    return result


def _other_spelling(pattern):
    spec, callback = str(pattern.pattern), pattern.callback
    if hasattr(callback, "cls"):  # a DRF view: the same view, without a second entry in the schema
        callback = callback.cls.as_view(**{**callback.initkwargs, "schema": None})
    if isinstance(pattern.pattern, RoutePattern):
        if not spec:
            return None
        return path(spec[:-1] if spec.endswith("/") else spec + "/", callback, pattern.default_args, pattern.name)
    if spec.endswith("/?$") or not spec.endswith("$"):
        return None
    body = spec[:-1]
    return re_path(body[:-1] + "$" if body.endswith("/") else body + "/$", callback, pattern.default_args, pattern.name)
