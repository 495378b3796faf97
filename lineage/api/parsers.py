import gzip
import io
import zlib

from django.conf import settings
from rest_framework.exceptions import ParseError

from core.errors import PayloadTooLarge
from core.parsers import BoundedJSONParser, content_encoding, parse_body


class OpenLineageParser(BoundedJSONParser):
    """JSON, optionally gzip-compressed (`Content-Encoding: gzip`, the OpenLineage HTTP transport's
    `compression: gzip`). The decompressed body is bounded by MAX_JSON_BODY_BYTES as well."""

    def parse(self, stream, media_type=None, parser_context=None):
        if content_encoding((parser_context or {}).get("request"), also=("gzip",)) == "":
            return super().parse(stream, media_type, parser_context)
        limit = settings.MAX_JSON_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes.", detail={"limit_bytes": limit})
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unzipped:
                body = unzipped.read(limit + 1)
        except (OSError, EOFError, zlib.error):
            raise ParseError("The gzip-compressed body could not be decompressed.") from None
        if len(body) > limit:
            raise PayloadTooLarge(f"Decompressed body is larger than {limit} bytes.", detail={"limit_bytes": limit})
        return parse_body(body)
