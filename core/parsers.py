from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from core.errors import PayloadTooLarge


class BoundedJSONParser(JSONParser):
    """JSON parser that refuses bodies above MAX_JSON_BODY_BYTES with a 413 before parsing, and
    answers a body nested too deeply to parse with a 400 instead of a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MAX_JSON_BODY_BYTES
        request = (parser_context or {}).get("request")
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        if declared > limit:
            raise PayloadTooLarge(
                f"Request body is {declared} bytes; the limit for JSON bodies is {limit} bytes.",
                detail={"limit_bytes": limit},
            )
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:  # e.g. [[[[...]]]] a hundred thousand deep: the client's fault, not a 500
            raise ParseError("JSON parse error - nested too deeply.") from None
