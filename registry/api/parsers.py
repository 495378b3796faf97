from django.conf import settings
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer, JSONRenderer

from core.errors import InvalidInput, PayloadTooLarge
from core.parsers import content_encoding


class MarkdownParser(BaseParser):
    """`text/markdown` bodies (a Hugging Face README.md) as a str, bounded by MAX_JSON_BODY_BYTES."""

    media_type = "text/markdown"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MAX_JSON_BODY_BYTES
        context = parser_context or {}
        request = context.get("request")
        content_encoding(request)
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        too_large = PayloadTooLarge(
            f"Request body is larger than the limit of {limit} bytes for Markdown bodies.",
            detail={"limit_bytes": limit},
        )
        if declared > limit:
            raise too_large
        raw = stream.read(limit + 1)  # the declared length may be absent or wrong: never read past the limit
        if len(raw) > limit:
            raise too_large
        encoding = context.get("encoding") or settings.DEFAULT_CHARSET
        try:
            # A byte order mark (Windows editors write one) is no text: before `---` it hides the metadata.
            return raw.decode(encoding).removeprefix("\ufeff")
        except (UnicodeDecodeError, LookupError):
            raise InvalidInput(
                f"The Markdown body is not valid {encoding} text.", code="invalid_encoding", detail=None
            ) from None


class MarkdownRenderer(BaseRenderer):
    """Renders a str as `text/markdown`; anything else (errors, JSON bodies) falls back to JSON."""

    media_type = "text/markdown"
    format = "md"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, str):
            return data.encode(self.charset)
        return JSONRenderer().render(data, "application/json", renderer_context)
