"""CSV cells a spreadsheet will not evaluate as formulas (OWASP "CSV injection").

Only the CSV exports use this: the NDJSON audit export is hash-verified and must stay as stored.
"""

# OWASP's list: a cell starting with one of these is read as a formula by Excel, LibreOffice, Sheets.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value):
    """A string starting like a formula gets a leading `'` (shown as text, not evaluated); anything else as is.

    Only strings are escaped: they are what clients send (names, reasons, comments). Numbers the exporter
    writes itself (ints, a negative float) are data, so `-0.5` in a numeric column stays a number."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def row(values) -> list:
    return [cell(value) for value in values]
