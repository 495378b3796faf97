"""Text the registry cannot keep: a lone UTF-16 surrogate (U+D800-U+DFFF) is not a character, and neither
PostgreSQL nor UTF-8 can hold one; PostgreSQL's text and jsonb cannot hold NUL (U+0000) either. Such text
fails wherever it is next stored or sent, so inputs that can smuggle it in through an escape (JSON's and
YAML's \\u0000 and \\uD800) refuse it where they are parsed, naming where it was."""

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Characters an identifier (a name that becomes part of an id, a CSV cell, a page) must not hold and core.logging
# writes escaped: the C0 controls, DEL, the C1 controls and the line and paragraph separators, which line-based
# readers split on and terminals act on, and the bidirectional embeddings, overrides and isolates, which show text
# in another order than the one it is stored in ("Trojan Source", CVE-2021-42574). BEYOND_C0 is all but the C0
# controls, as a regular expression's character class holds them.
BEYOND_C0 = "\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[\x01-\x1f{BEYOND_C0}]")  # NUL is unstorable's


def unstorable(text: str) -> str | None:
    """The first character of `text` that cannot be kept (a pair escaped in JSON arrives as one character)."""
    match = _UNSTORABLE.search(text)
    return match.group() if match else None


def control(text: str) -> tuple[int, str] | None:
    """The first control character in `text` (see _CONTROL) and its position (from 0), or None."""
    match = _CONTROL.search(text)
    return (match.start(), match.group()) if match else None


def control_message(char: str, at: int) -> str:
    return f"control character U+{ord(char):04X} at position {at} is not allowed: remove it."


def printable(text: str) -> str:
    """`text` with lone surrogates written as their escapes, e.g. for a message naming a key that holds one."""
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")


def unstorable_message(where: str, char: str, astral_escape: str) -> str:
    """`astral_escape`: how the input's syntax writes a character beyond U+FFFF."""
    if char == "\x00":
        return f"{where} holds a NUL character (\\u0000), which cannot be stored: remove it."
    return (
        f"{where} holds a lone surrogate (\\u{ord(char):04x}), which is not a character: write a character "
        f"beyond U+FFFF {astral_escape}, or as UTF-8."
    )
