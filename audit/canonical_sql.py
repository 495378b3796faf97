"""`audit.chain.canonical_json` of an event, as a PostgreSQL expression over its stored columns.

One builder for every place PostgreSQL writes it: the chain-link trigger, which hashes the event body
(migration 0003) and stores the export line (0005), and the export, which builds the line of events
recorded before lines were stored. Keys come in
sorted order; strings go through to_json, which escapes exactly what Python's
json.dumps(ensure_ascii=False) escapes (quote, backslash, control characters as \\b \\f \\n \\r \\t or
\\u00xx); `before`/`after` are stored as canonical JSON text already and are spliced in as they are.
tests/test_audit_export.py and tests/test_audit_link_trigger.py hold it to the Python definition
byte for byte.
"""

from audit.chain import EVENT_FIELDS

_INTEGERS = {"seq", "actor_id", "token_id"}
_JSON_TEXT = {"before", "after"}
_LINKS = ("hash", "prev_hash")


def _value(field: str, row: str) -> str:
    column = f"{row}{field}"
    if field in _INTEGERS:
        return f"COALESCE({column}::text, 'null')"
    if field in _JSON_TEXT:
        return column
    if field == "at":
        return f"""'"' || to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"'"""
    if field in _LINKS:
        return f"""'"' || {column} || '"'"""
    return f"to_json({column})::text"


def canonical_sql(row: str = "", *, links: bool = False) -> str:
    """The expression; `row` prefixes the columns ("NEW." in a trigger); `links` adds prev_hash and hash
    (the export line) to the 13 hashed fields (the body)."""
    fields = sorted([*EVENT_FIELDS, *(_LINKS if links else ())])
    parts = [f"""'{"," if i else "{"}"{field}":' || {_value(field, row)}""" for i, field in enumerate(fields)]
    return " || ".join(parts) + " || '}'"
