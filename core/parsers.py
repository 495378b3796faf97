import json
import math
import re

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, get_encoding
from rest_framework.utils.json import strict_constant

from core.errors import InvalidInput, PayloadTooLarge
from core.unicode import printable, unstorable, unstorable_message

# JSON can only carry what cannot be stored (core.unicode) as an escape: UTF-8 cannot encode a surrogate,
# and a raw control character is not valid JSON.
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is too large for a double (nothing could store it)")
    return value


def _loads(text: str):
    """JSON text as data, refusing what json.loads lets through and nothing downstream can store: NaN and
    Infinity (as DRF's strict mode does), a number too large for a double (json.loads makes it infinite),
    nesting too deep to parse (a RecursionError, e.g. [[[[...]]]] a hundred thousand deep), and a name repeated
    in one object."""
    try:
        return json.loads(text, parse_constant=strict_constant, parse_float=_finite, object_pairs_hook=_object)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _object(pairs: list) -> dict:
    """A JSON object whose names are unique: json.loads keeps the last of repeated names, so `{"name": "a",
    "name": "b"}` would act on a value the sender may not have meant (and a reviewer reading the body, another)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = set()
        repeated = next(name for name, _ in pairs if name in seen or seen.add(name))
        raise ValueError(f"the name {printable(repeated)[:100]!r} appears more than once in one object")
    return value


def parse_body(raw: bytes, encoding: str = "utf-8"):
    """A JSON request body as data, or a ParseError (a 400) saying what is wrong with it: not text in
    `encoding`, not JSON, or holding what nothing downstream could store (_loads, _refuse_unstorable_text)."""
    try:
        data = _loads(raw.decode(encoding))  # UnicodeDecodeError is a ValueError
    except ValueError as exc:
        raise ParseError(f"JSON parse error - {exc}") from None
    _refuse_unstorable_text(raw, data)
    return data


def _refuse_unstorable_text(raw: bytes, data) -> None:
    """ParseError naming where `data` (parsed from the JSON text `raw`) holds text that cannot be stored. A
    body without such an escape (nearly every one) is not walked."""
    if _UNSTORABLE_ESCAPE.search(raw) is None:
        return
    found = _unstorable(data, "")
    if found is not None:
        where, char = found
        where = f"the text at {where}" if where else "the text"
        raise ParseError("JSON parse error - " + unstorable_message(where, char, "as a pair of surrogate escapes"))


def _unstorable(value, where: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        char = unstorable(value)
        return (where, char) if char else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        here = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{printable(key)}" if where else printable(key)
        found = (_unstorable(key, here) if isinstance(key, str) else None) or _unstorable(item, here)
        if found:
            return found
    return None


class BoundedJSONParser(BaseParser):
    """JSON parser that refuses bodies above MAX_JSON_BODY_BYTES with a 413 naming the limit, and answers a
    body nested too deeply to parse, or holding a number or text that cannot be stored, with a 400 instead of
    a 500.

    Not a subclass of DRF's JSONParser on purpose: DRF reads a JSONParser's body whole through Django's
    `request.body` first, whose own limit (DATA_UPLOAD_MAX_MEMORY_SIZE, for the web forms) then answered
    before this one, without saying what the limit is. Handed the request's stream instead, this parser is
    the one limit on an API JSON body, and never reads more than one byte past it."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MAX_JSON_BODY_BYTES
        request = (parser_context or {}).get("request")
        content_encoding(request)
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        if declared > limit:
            raise _too_large(f"{declared} bytes", limit)
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:  # under ASGI the body is not cut at the declared length
            raise _too_large(f"more than {limit} bytes", limit)
        return parse_body(raw, get_encoding(parser_context or {}))


def content_encoding(request, also: tuple[str, ...] = ()) -> str:
    """The body's Content-Encoding ("" for none or identity), refused (400 unsupported_encoding) unless one of
    `also`: compressed bytes read as the body's media type were a baffling "can't decode byte 0x8b"."""
    sent = request.META.get("HTTP_CONTENT_ENCODING", "").strip() if request is not None else ""
    encoding = "" if sent.lower() == "identity" else sent.lower()
    if encoding and encoding not in also:
        accepted = ", ".join(("identity", *also))
        raise InvalidInput(
            f"Content-Encoding '{printable(sent)[:40]}' is not supported here (accepted: {accepted}); send the body "
            "uncompressed" + (" or in one of those." if also else "."),
            code="unsupported_encoding",
        )
    return encoding


def _too_large(size: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Request body is {size}; the limit for JSON bodies is {limit} bytes (MAX_JSON_BODY_BYTES). "
        "Send less, or have the registry's operator raise MAX_JSON_BODY_BYTES.",
        detail={"limit_bytes": limit},
    )
