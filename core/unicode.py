"""Lone UTF-16 surrogates (U+D800-U+DFFF) are not characters: neither PostgreSQL nor UTF-8 can hold one, so
text holding one fails wherever it is next stored or sent. Inputs that can smuggle one in through an escape
(JSON's and YAML's \\uD800) refuse it where they are parsed, naming where it was."""

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> str | None:
    """The first lone surrogate in `text` (a pair escaped in JSON or YAML arrives as one character), or None."""
    match = _SURROGATE.search(text)
    return match.group() if match else None


def printable(text: str) -> str:
    """`text` with any lone surrogate written as its escape, e.g. for a message that names a key holding one."""
    return text.encode("utf-8", "backslashreplace").decode()


def lone_surrogate_message(where: str, char: str, escape: str) -> str:
    """`escape`: how the input's syntax writes a character beyond U+FFFF."""
    return (
        f"{where} holds a lone surrogate (\\u{ord(char):04x}), which is not a character: write a character "
        f"beyond U+FFFF {escape}, or as UTF-8."
    )
