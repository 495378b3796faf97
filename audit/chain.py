#!/usr/bin/env python3
"""The audit hash chain: one definition, used by the registry and by auditors.

Standard library only, so an auditor can run it on an exported file without the project:

    python3 chain.py audit-export.ndjson [--partial | --allow-gaps] [--expect-head HASH]

A whole export must start at sequence 1. Pass --partial for a contiguous export that starts later
(filtered by since/until or after_seq), --allow-gaps for one filtered by subject or actor, and
--expect-head with the X-Audit-Last-Hash the registry sent to detect events missing from the end.

Rule: hash = sha256(prev_hash || canonical_json(event)), where prev_hash is the previous event's
hash as 64 lowercase hex ASCII characters (64 zeros before the first event), and canonical JSON is
the event's fields below with sorted keys, "," and ":" separators, no whitespace, UTF-8 (no \\u
escapes for non-ASCII), no NaN/Infinity. Each export line is the event plus "prev_hash" and "hash".

Exit status: 0 when every line verifies, 1 naming the first bad sequence number, 2 on usage errors.
"""

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator

GENESIS = "0" * 64
EVENT_FIELDS = (
    "seq",
    "at",
    "actor_id",
    "actor_username",
    "token_id",
    "request_id",
    "action",
    "subject_type",
    "subject_id",
    "subject_repr",
    "before",
    "after",
    "reason",
)


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def event_hash(prev_hash: str, event: dict) -> str:
    body = {field: event[field] for field in EVENT_FIELDS}
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


class ChainError(Exception):
    def __init__(self, seq, line: int, reason: str):
        super().__init__(f"sequence {seq} (line {line}): {reason}" if seq is not None else f"line {line}: {reason}")
        self.seq = seq
        self.line = line
        self.reason = reason


def verify_events(
    events: Iterable[dict], *, allow_gaps: bool = False, from_genesis: bool = False, first_line: int = 1
) -> tuple[int, str]:
    """Check every event; return (count, last hash). Raises ChainError at the first bad one.

    Contiguous exports must have consecutive sequence numbers, each linking to the one before.
    With allow_gaps (an export filtered by subject or actor), each event's own hash is still
    checked and sequence numbers must strictly increase. With from_genesis the events must start
    at sequence 1 (the whole log, as the registry checks it).
    """
    prev_seq, prev_hash, count = None, None, 0
    for line, event in enumerate(events, start=first_line):
        seq = event.get("seq") if isinstance(event, dict) else None
        missing = [f for f in (*EVENT_FIELDS, "prev_hash", "hash") if not isinstance(event, dict) or f not in event]
        if missing:
            raise ChainError(seq, line, "missing fields: " + ", ".join(missing))
        if not isinstance(seq, int) or seq < 1:
            raise ChainError(seq, line, "seq must be a positive integer")
        if prev_seq is None:
            if from_genesis and seq != 1:
                raise ChainError(seq, line, "expected sequence 1: the log must start there, earlier events are missing")
            if seq == 1 and event["prev_hash"] != GENESIS:
                raise ChainError(seq, line, "the first event must link to the genesis hash")
        elif allow_gaps:
            if seq <= prev_seq:
                raise ChainError(seq, line, f"out of order: follows sequence {prev_seq}")
        else:
            if seq != prev_seq + 1:
                raise ChainError(
                    seq,
                    line,
                    f"expected sequence {prev_seq + 1} after {prev_seq}: an event was removed, inserted or reordered",
                )
            if event["prev_hash"] != prev_hash:
                raise ChainError(seq, line, "prev_hash does not match the previous event's hash")
        try:
            computed = event_hash(event["prev_hash"], event)
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            raise ChainError(seq, line, f"cannot be hashed: {exc}") from None
        if computed != event["hash"]:
            raise ChainError(seq, line, "hash does not match the event's contents: the event was changed")
        prev_seq, prev_hash, count = seq, event["hash"], count + 1
    return count, prev_hash or GENESIS


def _read_ndjson(stream) -> Iterator[dict]:
    for line_no, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ChainError(None, line_no, f"not valid JSON: {exc.msg}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an exported audit log (NDJSON) offline.")
    parser.add_argument("path", help="NDJSON export file, or - for standard input")
    parser.add_argument(
        "--partial", action="store_true", help="the export does not start at sequence 1 (since/after_seq filter)"
    )
    parser.add_argument("--allow-gaps", action="store_true", help="the export was filtered by subject or actor")
    parser.add_argument("--expect-head", metavar="HASH", help="the last event's hash as published by the registry")
    args = parser.parse_args(argv)
    try:
        stream = sys.stdin if args.path == "-" else open(args.path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"cannot read {args.path}: {exc}", file=sys.stderr)
        return 2
    last_seq = 0

    def tracked(events: Iterable[dict]) -> Iterator[dict]:
        nonlocal last_seq
        for event in events:
            yield event
            last_seq = event["seq"]  # reached only once the event has verified

    with stream:
        try:
            count, head = verify_events(
                tracked(_read_ndjson(stream)),
                allow_gaps=args.allow_gaps,
                from_genesis=not (args.partial or args.allow_gaps),
            )
        except ChainError as exc:
            print(f"FAIL: {exc}", file=sys.stderr)
            if exc.reason.startswith("expected sequence 1:"):
                print("(an export filtered by since/until or after_seq needs --partial)", file=sys.stderr)
            return 1
    if args.expect_head and head != args.expect_head:
        print(
            f"FAIL: sequence {last_seq + 1}: the export ends at sequence {last_seq} (hash {head}) but the expected "
            f"head is {args.expect_head}: events from sequence {last_seq + 1} on are missing or were replaced",
            file=sys.stderr,
        )
        return 1
    print(f"OK: {count} events verified; last hash {head}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
