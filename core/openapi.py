"""OpenAPI schema post-processing: document the error responses every operation can give.

Every error leaves the API through core.api.exception_handler as {"error": {code, message, detail,
request_id}}. Views declare their success responses; this hook adds the error statuses that the
shared machinery can produce for each operation, with that body, so clients (and schemathesis) see
them in the schema:

- 400 (invalid input: a query parameter the operation does not take, core.api.BaseAPIView), 401 (no or
  bad credentials), 403 (token scope or permission), 404 (hidden or missing object, or an unknown
  pagination cursor): every operation;
- 406 (an Accept header the operation cannot meet, e.g. application/xml): every operation whose view negotiates
  its media type (core.api.QuerySchema adds it; the exports that pick theirs by `format` never answer 406);
- 409 (the current state refuses the change): every unsafe method;
- 413 (body too large) and 415 (unsupported Content-Type): operations that take a body.

A 405 (a method the path does not take) is not listed: it answers a method no operation of the path has.

A status a view already documents keeps its description; it gains the error body if it had none.
"""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from drf_spectacular.views import SpectacularAPIView

from core.errors import InvalidInput

ERROR_COMPONENT = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error response: a machine-readable code, a message for people, details per field.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. invalid, not_found, forbidden"},
                "message": {"type": "string", "description": "what went wrong and what to do, in words"},
                "detail": {"nullable": True, "description": "per-field messages for invalid input, or null"},
                "request_id": {"type": "string", "nullable": True, "description": "quote it when reporting"},
            },
            "required": ["code", "message", "detail"],
        }
    },
    "required": ["error"],
}
DESCRIPTIONS = {
    "400": "Invalid input: the message names the field",
    "401": "Missing, malformed, expired or revoked credentials",
    "403": "The token's scopes or the user's permissions do not allow this",
    "404": "No such object, or one the caller may not see",
    "406": "The Accept header names no media type this operation answers in (those of its responses)",
    "409": "The object's current state does not allow this",
    "412": "If-Match names another state of the object: read it again",
    "413": "Request body too large",
    "415": "Unsupported Content-Type",
}
UNSAFE = {"post", "put", "patch", "delete"}


def error_statuses(method: str, operation: dict) -> list[str]:
    statuses = ["400", "401", "403", "404"]
    has_body = "requestBody" in operation
    if method in UNSAFE:
        statuses.append("409")
    if has_body:
        statuses += ["413", "415"]
    return statuses


def document_errors(result, generator, request, public):
    """drf-spectacular POSTPROCESSING_HOOKS entry."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = ERROR_SCHEMA
    ref = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            documented = [status for status in responses if status.isdigit() and int(status) >= 400]  # e.g. a 412
            for status in dict.fromkeys(error_statuses(method, operation) + documented):
                response = responses.setdefault(status, {"description": DESCRIPTIONS.get(status, "Error")})
                content = response.setdefault("content", {})
                content.setdefault("application/json", {}).setdefault("schema", ref)
    return result


def etag_header(what: str) -> OpenApiParameter:
    """The ETag response header of a resource whose writes can be conditional (core.etags)."""
    return OpenApiParameter(
        "ETag",
        str,
        OpenApiParameter.HEADER,
        response=[200, 201, 304],
        description=f"{what}'s entity tag: send it as If-Match to change it only if it is still as you read it",
    )


def if_match_header(what: str) -> OpenApiParameter:
    return OpenApiParameter(
        "If-Match",
        str,
        OpenApiParameter.HEADER,
        description=f"the ETag of your last read of {what}: changed only if it is still so (else 412, nothing written)",
    )


def if_none_match_header(what: str) -> OpenApiParameter:
    """For a view whose ETag validates its body (BaseAPIView.etag_validates_body): with NOT_MODIFIED."""
    return OpenApiParameter(
        "If-None-Match",
        str,
        OpenApiParameter.HEADER,
        description=f"the ETag of your last read of {what}: a 304 with no body if it is still so",
    )


NOT_MODIFIED = OpenApiResponse(description="Not Modified: still as the If-None-Match ETag says (no body)")


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema, YAML unless asked otherwise: `?format=json` (or `yaml`) picks the format as an Accept
    header does. DRF's own `format` switch is off in this project (URL_FORMAT_OVERRIDE: `format` picks an export's
    format elsewhere), so `?format=json` answered YAML."""

    def perform_content_negotiation(self, request, force=False):
        wanted = request.query_params.get("format")
        if wanted is None:
            return super().perform_content_negotiation(request, force)
        renderers = self.get_renderers()
        for renderer in renderers:
            if renderer.format == wanted:
                return renderer, renderer.media_type
        if force:  # rendering the refusal below: as JSON, as every API error is
            renderer = next(r for r in renderers if r.media_type == "application/json")
            return renderer, renderer.media_type
        raise InvalidInput(f"format '{wanted[:40]}' is not one of: json, yaml.", detail={"format": ["json or yaml"]})
