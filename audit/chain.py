#!/usr/bin/env python3
"""The audit hash chain: one definition, used by the registry and by auditors.

Standard library only (Python 3.8 or later), so an auditor can run it on an exported file without the project:

    python3 chain.py audit-export.ndjson [--allow-gaps] [--expect-start SEQ:PREV_HASH] [--expect-head HASH]
                     [--expect-count N] [--jobs N]

A whole export must start at sequence 1. Pass --expect-start with the X-Audit-First-Seq and X-Audit-First-Prev-Hash
the registry sent (as SEQ:PREV_HASH) to detect events missing from the start: the first line must be that sequence
number and link to that hash (0 and the genesis hash: the export holds no event); --expect-head with the
X-Audit-Last-Hash it sent detects events missing from the end; --expect-count with the X-Audit-Count it sent, events
removed or added anywhere (the file must hold that many events). --allow-gaps is for an export filtered by subject or
actor; --partial accepts a contiguous export that starts later without checking where (if those headers were lost).
--allow-gaps proves less. Sequence numbers then only have to increase, so an event deleted from between the first
and the last goes unseen unless --expect-count is given. And even with it, an event whose successor was filtered
out links to nothing in the file, so whoever rewrote it could have recomputed its hash. For evidence, verify a
contiguous export (a time or sequence range) and filter it afterwards.

Rule: hash = sha256(prev_hash || canonical_json(event)), where prev_hash is the previous event's
hash as 64 lowercase hex ASCII characters (64 zeros before the first event), and canonical JSON is
the event's fields below with sorted keys, "," and ":" separators, no whitespace, UTF-8 (no \\u
escapes for non-ASCII), no NaN/Infinity. Each export line is the event plus "prev_hash" and "hash", and
nothing else: a line with any other member (which no hash covers) fails, and so does one that repeats a
key in any of its objects (readers disagree on which of the values counts, and the hash covers one).

Lines as the registry writes them (that canonical JSON) are checked in batches without being
re-serialized; any other line is parsed, re-serialized and checked on its own, with the same verdict.
--jobs N (default: the number of CPUs, at most 8) shares the blocks of lines among N worker processes.

Exit status: 0 when every line verifies, 1 naming the first bad sequence number (or line, for one that is not
JSON this verifier can read: broken, nested too deeply, or an integer of more than 4,300 digits) or saying how many
events the file holds when --expect-count expects another number, 2 on usage errors.
"""

from __future__ import annotations  # annotations stay unevaluated: this file runs on Python 3.8

import argparse
import codecs
import hashlib
import json
import os
import re
import stat
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain as chain_iterables
from itertools import compress, islice, repeat
from operator import add, itemgetter, lt, methodcaller

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

LINE_FIELDS = frozenset((*EVENT_FIELDS, "prev_hash", "hash"))  # an export line's members, exactly

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value) -> bytes:
    return _ENCODER.encode(value).encode()  # what json.dumps(value, **the same options) returns, without rebuilding it


def event_hash(prev_hash: str, event: dict) -> str:
    body = {field: event[field] for field in EVENT_FIELDS}
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


class ChainError(Exception):
    def __init__(self, seq, line: int, reason: str):
        super().__init__(f"sequence {seq} (line {line}): {reason}" if seq is not None else f"line {line}: {reason}")
        self.seq = seq
        self.line = line
        self.reason = reason


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple]) -> dict:
    """json's object_pairs_hook: the object as json.loads builds it, unless a key repeats in it."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return obj


def _loads(text: str):
    """json.loads, refusing any object in which a key repeats (json.loads keeps the last value, other readers the
    first, and the hash covers only one of them). Raises ValueError (_DuplicateKey, json.JSONDecodeError, an integer
    of more than 4,300 digits) or RecursionError (nesting too deep)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def parse_line(text: str, line: int):
    """One line of an NDJSON export as the verifier reads it (then pass it to verify_events()); raises ChainError
    naming the line (and its sequence number, when it can tell) if it is not JSON that it can read or if a key
    repeats in one of its objects."""
    try:
        return _loads(text)
    except _DuplicateKey as exc:
        key = exc.args[0]
        seq = None
        if key != "seq":
            try:
                seq = json.loads(text).get("seq")
            except Exception:  # noqa: BLE001 - not needed to refuse the line, only to name it
                seq = None
        if not isinstance(seq, int) or isinstance(seq, bool):
            seq = None
        reason = f"the key {key!r} appears twice in one object: which value counts depends on the reader"
        raise ChainError(seq, line, reason + ", and a hash covers one only") from None
    except json.JSONDecodeError as exc:
        raise ChainError(None, line, f"not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise ChainError(None, line, "not valid JSON: nested too deeply to be read") from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise ChainError(None, line, f"not valid JSON: {str(exc).partition(';')[0]}") from None


class _Chain:
    """The order and link checks, fed one event (checked in full) or one run of already hashed events at a time."""

    def __init__(self, allow_gaps: bool, from_genesis: bool, expect_start: tuple[int, str] | None = None):
        self.allow_gaps, self.from_genesis, self.expect_start = allow_gaps, from_genesis, expect_start
        self.prev_seq, self.prev_hash, self.count = None, None, 0

    def _start(self, seq, prev_hash, line: int) -> None:
        """The first event is the one the registry said the export starts with (--expect-start)."""
        start_seq, start_prev = self.expect_start
        if not start_seq:
            raise ChainError(seq, line, "expected no event (the export was said to be empty): events were added")
        if seq != start_seq:
            if seq < start_seq:
                lost = "events were added"
            elif seq == start_seq + 1:
                lost = f"sequence {start_seq} is missing"
            else:
                lost = f"sequences {start_seq} to {seq - 1} are missing"
            raise ChainError(seq, line, f"expected the export to start at sequence {start_seq}: {lost}")
        if prev_hash != start_prev:
            raise ChainError(seq, line, f"prev_hash is not the expected start's {start_prev}: the event was replaced")

    def end(self, line: int) -> None:
        """After the last event: an export said to start somewhere holds at least that event (`line`: the first)."""
        if self.expect_start and self.expect_start[0] and not self.count:
            start_seq = self.expect_start[0]
            raise ChainError(start_seq, line, f"no event, but the export was said to start at sequence {start_seq}")

    def _link(self, seq, prev_hash, line: int) -> None:
        if self.prev_seq is None:
            if self.expect_start is not None:
                self._start(seq, prev_hash, line)
            if self.from_genesis and seq != 1:
                raise ChainError(seq, line, "expected sequence 1: the log must start there, earlier events are missing")
            if seq == 1 and prev_hash != GENESIS:
                raise ChainError(seq, line, "the first event must link to the genesis hash")
        elif self.allow_gaps:
            if seq <= self.prev_seq:
                raise ChainError(seq, line, f"out of order: follows sequence {self.prev_seq}")
            if seq == self.prev_seq + 1 and prev_hash != self.prev_hash:  # neighbours still link
                raise ChainError(seq, line, "prev_hash does not match the previous event's hash")
        else:
            if seq != self.prev_seq + 1:
                raise ChainError(
                    seq,
                    line,
                    f"expected sequence {self.prev_seq + 1} after {self.prev_seq}: "
                    "an event was removed, inserted or reordered",
                )
            if prev_hash != self.prev_hash:
                raise ChainError(seq, line, "prev_hash does not match the previous event's hash")

    def event(self, event, line: int) -> None:
        seq = event.get("seq") if isinstance(event, dict) else None
        named = seq if type(seq) is int else None  # JSON true reads as a bool, an int equal to 1: never named
        missing = [f for f in (*EVENT_FIELDS, "prev_hash", "hash") if not isinstance(event, dict) or f not in event]
        if missing:
            raise ChainError(named, line, "missing fields: " + ", ".join(missing))
        if len(event) != len(LINE_FIELDS):  # all of them are there: others too
            extra = ", ".join(str(f) for f in event if f not in LINE_FIELDS)
            raise ChainError(named, line, f"fields that no hash covers: {extra}")
        if named is None or seq < 1:
            given = "" if named is not None else f", not {json.dumps(seq)[:40]}"
            raise ChainError(named, line, f"seq must be a positive integer{given}")
        for field in ("prev_hash", "hash"):
            if not isinstance(event[field], str):
                raise ChainError(
                    seq, line, f"{field} must be a string of 64 hex digits, not {json.dumps(event[field])[:40]}"
                )
        self._link(seq, event["prev_hash"], line)
        try:
            computed = event_hash(event["prev_hash"], event)
        except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
            raise ChainError(seq, line, f"cannot be hashed: {exc}") from None
        if computed != event["hash"]:
            raise ChainError(seq, line, "hash does not match the event's contents: the event was changed")
        self.prev_seq, self.prev_hash, self.count = seq, event["hash"], self.count + 1

    def run(self, run: tuple, line: int) -> None:
        """n events whose hashes already matched and that already follow each other (see _scan_block)."""
        n, first_seq, first_prev, last_seq, last_hash = run
        self._link(first_seq, first_prev, line)  # what the first of them would have been checked against
        self.prev_seq, self.prev_hash, self.count = last_seq, last_hash, self.count + n


def verify_events(
    events: Iterable[dict],
    *,
    allow_gaps: bool = False,
    from_genesis: bool = False,
    expect_start: tuple[int, str] | None = None,
    first_line: int = 1,
) -> tuple[int, str]:
    """Check every event; return (count, last hash). Raises ChainError at the first bad one.

    Each event is a dict with exactly LINE_FIELDS, as an export line holds them; parse lines with parse_line(),
    which refuses a key repeated in an object (a dict cannot show one), or pass them to verify_lines().

    Contiguous exports must have consecutive sequence numbers, each linking to the one before.
    With allow_gaps (an export filtered by subject or actor), each event's own hash is still
    checked, sequence numbers must strictly increase and neighbours (n, n+1) must link; an event whose
    successor is not in the export could have been rewritten with its hash recomputed, which only a
    contiguous export can show. With from_genesis the events must start
    at sequence 1 (the whole log, as the registry checks it). With expect_start (seq, prev_hash) the first event
    must have that seq and prev_hash, and (0, GENESIS) means there must be none.
    """
    chain = _Chain(allow_gaps, from_genesis, expect_start)
    for line, event in enumerate(events, start=first_line):
        chain.event(event, line)
    chain.end(first_line)
    return chain.count, chain.prev_hash or GENESIS


# --- verifying the export's raw lines ----------------------------------------------------------
#
# verify_events() costs, per line, a json.loads, a re-serialization of the body and a hash. A line
# the registry wrote is the canonical JSON of the event with prev_hash and hash, so the body it
# hashed is the line itself minus the members '"hash":"H","prev_hash":"P",' and could be hashed as
# it is. That alone is not sound: the hash in a line proves nothing until the chain reaches a head
# the registry published, so a line edited into another form (spaces, another key order, \u
# escapes, 1.50 for 1.5, a duplicated key, the members moved into a nested object or copied into a
# string) and given the sha256 of its own raw bytes would pass where verify_events() rejects it.
# So _canonical_batch() first proves that every line of a batch is canonical, with a few C-speed
# operations over the whole batch (one json.loads, bytes and list methods, map), and only then
# hashes the raw bodies. What it cannot prove, and whatever does not verify, is checked by the same
# code as verify_events(), line by line; failures are only ever reported by that code (_Chain), so
# the verdict, the message and the sequence number are those of verify_events().
#
# Why each line L of a batch that passes is canonical (E = json.loads(L)), given that _suspect()
# found nothing in it. Write M for the string "\x00", spelled "\u0000" in JSON: no line holds a
# string equal to it, as that takes an escape (a backslash) or a raw control character (invalid).
#  * One json.loads over '[{M:L1},\nM,\n{M:L2},\nM,...,{M:Ln}]' returns [None, M, None, ..., None]:
#    object_hook replaces every object by None (after appending it to a list), and the n-1 strings
#    M are the separators put there (no line holds one, and a separator cannot lie inside a string:
#    a raw newline is invalid there). So the separators are top-level elements and each {M:Li} is
#    one element. That wrapper has the single key M, so a single member whose value is all of Li:
#    one JSON value, an object as Li starts with "{" (null would give None too), which is completed,
#    and appended, just before its wrapper; and the wrappers are the only objects with the key M.
#  * No whitespace outside strings: no tab, CR or LF in a line; a space between two tokens touches
#    one of "{[]}:," and shows as "{ " "[ " ", " ": " " ," " }" " ]" or " :", none of which occurs
#    (inside a string they only keep the line off this path); L starts with "{" and ends with "}".
#  * Strings: no backslash, so no escapes, and no raw control character (json.loads refuses them):
#    each string is its raw bytes, strictly valid UTF-8, which is how canonical_json writes it
#    (ensure_ascii=False escapes only '"', backslash and control characters). And every '"' in the
#    batch delimits a string.
#  * Numbers: an integer token is -?(0|[1-9][0-9]*), what Python writes, except "-0", which does not
#    occur (with no whitespace, an integer is followed by "," "}" or "]"). Each float token equals
#    repr(float(token)), what the encoder writes: checked by repr() itself, or, for the common short
#    ones, by _SHORT_FLOATS: a decimal with at most 15 significant digits (DBL_DIG) is the only one of
#    that many digits that rounds to its float, so repr(), the shortest string that does, has its
#    digits; and from 1e-4 up to 1e16 repr() writes them in positional form, with no trailing zero
#    but the one of "x.0". NaN, Infinity and -Infinity are refused.
#  * Objects: every object's keys are in sorted order, and none had a duplicate key (which a dict
#    hides): each key ends in '":' and any other '":' is a string starting with ":", so the batch
#    has as many '":' as the dicts have keys only if there was none. L's own object has exactly the
#    13 EVENT_FIELDS plus "prev_hash" and "hash".
#  So L == canonical_json(E), where E's members hash and prev_hash, with H and P of 64 hex digits, are
#  the text '"hash":"H","prev_hash":"P",' (between "before" and "reason"). Removing it from each line
#  leaves canonical_json of each body, what event_hash() hashes after P. Every '"hash":"' in a valid
#  line is a key "hash" with a string value, so n of them in the batch mean exactly one per line, that
#  text's: each is followed by the 145 bytes to drop. Otherwise (a payload with its own "hash"), the
#  text matches _MEMBERS, and n matches in the batch mean exactly one per line, the same text.

_MARK = "\x00"  # M above
_HEAD, _TAIL = b'[{"\\u0000":', b"}]"
_SEP = b'},\n"\\u0000",\n{"\\u0000":'  # between two lines: closes one wrapper, opens the next
_WRAPPER_KEYS = (_MARK,)
_LINE_KEYS = tuple(sorted((*EVENT_FIELDS, "prev_hash", "hash")))
_SPACE_NEXT_TO_PUNCTUATION = re.compile(rb" (?:(?<=[{\[,:] )|(?=[,}\]:]))")
_NEGATIVE_ZERO = re.compile(rb"-0[,}\]]")
_HEX_DIGITS = b"0123456789abcdef"
# float tokens, each followed by a newline, that are their own repr() (see above): at most 15 digits, no exponent, no
# trailing zero but in "x.0", at most three zeros after "0." (repr(0.00001) is "1e-05")
_SHORT_FLOATS = re.compile(
    r"(?:-?(?=[0-9.]{3,16}\n)(?:[1-9][0-9]*\.(?:[0-9]*[1-9]|0)|0\.(?:0{0,3}[1-9](?:[0-9]*[1-9])?|0))\n)*"
)
_HASH_KEY = b'"hash":"'
_first_byte, _last_byte = itemgetter(0), itemgetter(-1)
_MEMBERS = re.compile(rb'"hash":"[0-9a-f]{64}","prev_hash":"[0-9a-f]{64}",')
_AFTER_MEMBERS = itemgetter(slice(len('H","prev_hash":"P",') + 2 * 63, None))  # H and P of 64 hex digits
_seq, _prev_hash, _hash = itemgetter("seq"), itemgetter("prev_hash"), itemgetter("hash")
_digest = methodcaller("digest")


def _no_constant(name: str):
    raise ValueError(f"{name} is not canonical JSON")


def _suspect(data: bytes) -> bool:
    """Whether these bytes hold anything that a canonical line cannot (or, for ": " and the like, need not) hold."""
    return (
        b"\\" in data
        or b"\t" in data
        or b"\r" in data
        or (b" " in data and _SPACE_NEXT_TO_PUNCTUATION.search(data) is not None)
        or _NEGATIVE_ZERO.search(data) is not None
    )


def _canonical_batch(lines: list[bytes]) -> tuple[tuple, tuple, tuple] | None:
    """The seqs, prev_hashes and hashes (in order) of these lines if each is provably canonical (see above) and its hash
    matches; None if not. The caller has made sure that no line is _suspect()."""
    n = len(lines)
    if not n:
        return (), (), ()
    try:
        if bytes(map(_first_byte, lines)) != b"{" * n or bytes(map(_last_byte, lines)) != b"}" * n:
            return None
        text = (_HEAD + _SEP.join(lines) + _TAIL).decode()
        objects, floats = [], []
        top = json.loads(text, object_hook=objects.append, parse_float=floats.append, parse_constant=_no_constant)
    except (IndexError, ValueError, RecursionError):  # an empty line, bad UTF-8 or JSON, nesting too deep
        return None
    if top != [None, _MARK] * (n - 1) + [None]:
        return None
    if (
        floats
        and not _SHORT_FLOATS.fullmatch("\n".join(floats) + "\n")
        and list(map(repr, map(float, floats))) != floats
    ):
        return None
    keys = list(map(tuple, objects))
    if any(list(k) != sorted(k) for k in set(keys)):
        return None
    if text.count('":') != sum(map(len, keys)):
        return None  # a duplicated key
    own, at = [], -1  # each line's object completes just before its wrapper
    try:
        while True:
            at = keys.index(_WRAPPER_KEYS, at + 1)
            own.append(at - 1)
    except ValueError:
        pass
    if len(own) != n or own[0] < 0 or list(map(keys.__getitem__, own)) != [_LINE_KEYS] * n:
        return None
    events = list(map(objects.__getitem__, own))
    seqs, prev_hashes, hashes = tuple(map(_seq, events)), tuple(map(_prev_hash, events)), tuple(map(_hash, events))
    try:  # 64 lowercase hex digits each: a hash must be (to equal a hexdigest), a prev_hash need not be, but other
        # members are not the bytes dropped below (those lines go one by one)
        prev_bytes = list(map(str.encode, prev_hashes))
        digits = b"".join(prev_bytes) + "".join(hashes).encode()
    except TypeError:  # not strings
        return None
    if set(map(len, prev_hashes + hashes)) != {64} or digits.translate(None, _HEX_DIGITS):
        return None
    data = b"\n".join(lines)
    pieces = data.split(_HASH_KEY)
    if len(pieces) == n + 1:  # one '"hash":"' per line, that of its members (see above)
        bodies = b"".join([pieces[0], *map(_AFTER_MEMBERS, islice(pieces, 1, None))])
    else:
        bodies, matches = _MEMBERS.subn(b"", data)
        if matches != n:
            return None
    bodies = bodies.split(b"\n")
    digests = map(_digest, map(hashlib.sha256, map(add, prev_bytes, bodies)))
    if b"".join(digests) != bytes.fromhex("".join(hashes)):  # all 32 bytes long: equal joined, equal one by one
        return None
    return seqs, prev_hashes, hashes


def _blank(text: str) -> bool:
    """A line of ASCII spaces, tabs and line ends only. Not str.strip()'s whitespace: a line of U+00A0, U+2028 or
    U+001C is no part of any export, and must fail as not JSON rather than be skipped."""
    return not text.strip(" \t\r\n")


def _checked_one_by_one(lines: list[bytes], encoding: str, errors: str) -> tuple[tuple, tuple, tuple] | None:
    """What _Chain.event() would accept, line by line, leaving out the order and links; None at the first
    line it would not accept (or a blank line): the caller then goes over the lines with _Chain itself."""
    seqs, prev_hashes, hashes = [], [], []
    for raw in lines:
        try:
            text = raw.decode(encoding, errors)
            if _blank(text):
                return None
            event = _loads(text)
            seq = event["seq"]
            if not isinstance(seq, int) or seq < 1 or event.keys() != LINE_FIELDS:
                return None
            if event_hash(event["prev_hash"], event) != event["hash"]:
                return None
        except Exception:  # noqa: BLE001 - whatever it is, _Chain.event() reports it exactly
            return None
        seqs.append(seq)
        prev_hashes.append(event["prev_hash"])
        hashes.append(event["hash"])
    return tuple(seqs), tuple(prev_hashes), tuple(hashes)


def _scan_block(data: bytes, allow_gaps: bool, encoding: str, errors: str) -> tuple | None:
    """(count, first seq, its prev_hash, last seq, last hash) when every line of this block (whole lines of the
    export) hashes correctly and they follow each other as the mode requires; None otherwise, and then the
    caller checks the block line by line. Runs in worker processes, so takes and returns plain values."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if not lines:
        return None
    triples = None
    if encoding == "utf-8":  # the only encoding in which a line's bytes are what the registry hashed
        if not _suspect(data):
            triples = _canonical_batch(lines)
        else:  # some lines with backslashes, spaces after commas...: the others still go through the batch
            suspect = list(map(_suspect, lines))
            fast = _canonical_batch([line for line, s in zip(lines, suspect) if not s])  # noqa: B905 - 3.8 (top)
            if fast is not None:
                slow = _checked_one_by_one(list(compress(lines, suspect)), encoding, errors)
                if slow is None:
                    return None
                # each of the three has one item per line: zip cannot drop any (no strict=, as Python 3.8 runs this)
                fast_events, slow_events = zip(*fast), zip(*slow)  # noqa: B905
                triples = tuple(zip(*[next(slow_events if s else fast_events) for s in suspect]))  # noqa: B905
    if triples is None:
        triples = _checked_one_by_one(lines, encoding, errors)
        if triples is None:
            return None
    seqs, prev_hashes, hashes = triples  # the hashes are str (equal to hexdigests), and so are the prev_hashes
    if set(map(type, seqs)) != {int} or seqs[0] < 1:
        return None  # true for a seq passes isinstance(seq, int): _Chain decides such lines
    if allow_gaps:
        if not all(map(lt, seqs, islice(seqs, 1, None))):
            return None
        pairs = zip(seqs, islice(seqs, 1, None), hashes, islice(prev_hashes, 1, None))  # noqa: B905 - one shorter
        if any(after == seq + 1 and prev != hash_ for seq, after, hash_, prev in pairs):
            return None  # neighbours must link; _Chain names the line
    elif seqs != tuple(range(seqs[0], seqs[0] + len(seqs))) or prev_hashes[1:] != hashes[:-1]:
        return None
    return len(seqs), seqs[0], prev_hashes[0], seqs[-1], hashes[-1]


def _split_blocks(data: bytes) -> Iterator[bytes]:
    """data (whole lines) in blocks of about BLOCK_SIZE, each ending with a line's newline (the last may not)."""
    start, size = 0, len(data)
    while start < size:
        end = data.rfind(b"\n", start, start + BLOCK_SIZE) + 1
        if end <= start:  # a line longer than a block
            end = data.find(b"\n", start + BLOCK_SIZE) + 1 or size
        yield data[start:end]
        start = end


def _read_range(path: str, start: int, end: int, universal_newlines: bool) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if universal_newlines and b"\r" in data:  # the range ends after a LF (or at the end): no CR LF is cut
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data


def _scan_task(task, allow_gaps: bool, encoding: str, errors: str) -> list:
    """A worker's share of the export: bytes, or (path, start, end, universal newlines) to read them. For each
    block of it, the run of events that verified (see _scan_block), or the block's bytes to check line by line."""
    data = _read_range(*task) if isinstance(task, tuple) else task
    results = []
    for block in _split_blocks(data):
        run = _scan_block(block, allow_gaps, encoding, errors)
        results.append(block if run is None else run)
    return results


BLOCK_SIZE = 1 << 16  # lines checked together: small enough for their objects to stay in the CPU's caches
TASK_SIZE = 1 << 20  # bytes handed to a worker process at a time


def _blocks(stream, universal_newlines: bool) -> Iterator[bytes]:
    """The binary stream in chunks of whole lines, each ending with a newline (the last may not), read TASK_SIZE at
    a time. With universal_newlines, CR LF and a lone CR end lines too (as LF), as in a file opened in text mode."""
    pending = b""
    while chunk := stream.read(TASK_SIZE):
        data = pending + chunk if pending else chunk
        hold = b""
        if universal_newlines and b"\r" in data:
            if data.endswith(b"\r"):  # its "\n" may be in the next chunk
                data, hold = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
        pending = data[cut:] + hold
    if pending:
        yield pending.replace(b"\r", b"\n") if universal_newlines else pending


def _ranges(path: str, universal_newlines: bool) -> Iterator[tuple[str, int, int, bool]]:
    """The file in ranges of about TASK_SIZE bytes, each ending just after a LF (or at the end of the file)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = 0
        while start < size:
            end = start + TASK_SIZE
            f.seek(end)
            while end < size:
                window = f.read(1 << 16)
                newline = window.find(b"\n")
                if newline >= 0:
                    end += newline + 1
                    break
                end += len(window)
            end = min(end, size)
            yield path, start, end, universal_newlines
            start = end


def _default_jobs() -> int:
    """The CPUs this process may use, at most 8: each worker holds about 20 MB."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 8)


def _verify_tasks(
    tasks: Iterable,
    *,
    allow_gaps: bool,
    from_genesis: bool,
    expect_start: tuple[int, str] | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    jobs: int = 1,
) -> tuple[int, str, int]:
    """(count, last hash, last seq) of the export in these tasks (see _scan_task), in order; raises ChainError as
    verify_events() would on the same lines, with the same line numbers."""
    encoding = codecs.lookup(encoding).name
    chain = _Chain(allow_gaps, from_genesis, expect_start)
    line_no = 0  # lines read, blank ones included, as JSON errors count them (the events count is chain.count)

    def apply(results: list) -> None:
        nonlocal line_no
        for result in results:
            if isinstance(result, tuple):
                chain.run(result, chain.count + 1)
                line_no += result[0]
                continue
            lines = result.split(b"\n")
            last = lines.pop()  # b"" when the block ends with a newline
            for raw, newline in [*zip(lines, repeat("\n")), (last, "")]:
                if not raw and not newline:
                    continue
                line_no += 1
                try:
                    text = raw.decode(encoding, errors) + newline
                except UnicodeDecodeError as exc:
                    raise ChainError(None, line_no, f"not valid {encoding}: {exc.reason} at byte {exc.start}") from None
                if _blank(text):
                    continue
                chain.event(parse_line(text, line_no), chain.count + 1)

    tasks = iter(tasks)
    first = next(tasks, None)
    second = next(tasks, None) if first is not None else None
    if second is None or jobs <= 1:
        for task in chain_iterables((t for t in (first, second) if t is not None), tasks):
            apply(_scan_task(task, allow_gaps, encoding, errors))
    else:
        import multiprocessing

        with multiprocessing.get_context().Pool(jobs) as pool:
            pending = deque()  # at most 2 tasks per worker in flight: memory stays bounded
            for task in chain_iterables((first, second), tasks):
                pending.append(pool.apply_async(_scan_task, (task, allow_gaps, encoding, errors)))
                if len(pending) >= 2 * jobs:
                    apply(pending.popleft().get())
            while pending:
                apply(pending.popleft().get())
    chain.end(1)
    return chain.count, chain.prev_hash or GENESIS, chain.prev_seq or 0


def verify_lines(
    lines: Iterable[bytes],
    *,
    allow_gaps: bool = False,
    from_genesis: bool = False,
    expect_start: tuple[int, str] | None = None,
    jobs: int = 1,
) -> tuple[int, str]:
    """verify_events() over the raw lines of an NDJSON export (UTF-8 bytes, with or without their newline), with the
    same verdicts; canonical lines, as the registry writes them, are hashed as they are, not re-serialized. With
    jobs > 1, worker processes check blocks of lines in parallel."""

    def chunks() -> Iterator[bytes]:
        batch, size, last = [], 0, None
        for line in lines:
            if last is not None:  # every line but the last one ends with a newline
                batch.append(last if last.endswith(b"\n") else last + b"\n")
                size += len(last)
                if size >= TASK_SIZE:
                    yield b"".join(batch)
                    batch, size = [], 0
            last = line
        if last is not None:
            batch.append(last)
        if batch:
            yield b"".join(batch)

    count, head, _ = _verify_tasks(
        chunks(), allow_gaps=allow_gaps, from_genesis=from_genesis, expect_start=expect_start, jobs=jobs
    )
    return count, head


_START = re.compile(r"(0|[1-9][0-9]*):([0-9a-f]{64})")


def _expected_start(value: str) -> tuple[int, str]:
    """--expect-start SEQ:PREV_HASH, as the export's X-Audit-First-Seq and X-Audit-First-Prev-Hash headers give it."""
    match = _START.fullmatch(value)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected SEQ:PREV_HASH, a sequence number and 64 lowercase hex digits "
            "(the export's X-Audit-First-Seq and X-Audit-First-Prev-Hash)"
        )
    seq, prev_hash = int(match.group(1)), match.group(2)
    if seq in (0, 1) and prev_hash != GENESIS:
        raise argparse.ArgumentTypeError(f"{value!r}: sequence {seq} goes with the genesis hash ({GENESIS})")
    return seq, prev_hash


def _expected_count(value: str) -> int:
    """--expect-count N, as the export's X-Audit-Count header gives it."""
    if not re.fullmatch(r"0|[1-9][0-9]*", value):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of events (the export's X-Audit-Count)")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an exported audit log (NDJSON) offline.")
    parser.add_argument("path", help="NDJSON export file, or - for standard input")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="the export does not start at sequence 1 (since/after_seq filter), and where it starts is not checked",
    )
    parser.add_argument("--allow-gaps", action="store_true", help="the export was filtered by subject or actor")
    parser.add_argument(
        "--expect-start",
        type=_expected_start,
        metavar="SEQ:PREV_HASH",
        help="the first event's sequence number and prev_hash, as the registry sent them (X-Audit-First-Seq and "
        "X-Audit-First-Prev-Hash; 0 and the genesis hash for an empty export)",
    )
    parser.add_argument("--expect-head", metavar="HASH", help="the last event's hash as published by the registry")
    parser.add_argument(
        "--expect-count",
        type=_expected_count,
        metavar="N",
        help="how many events the registry selected (X-Audit-Count): with --allow-gaps, the one check that no "
        "event was removed from between the first and the last",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=_default_jobs(),
        metavar="N",
        help="worker processes checking blocks of lines in parallel (default: the number of CPUs, at most 8; 1: none)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    # An export is UTF-8, from a file or stdin, whatever the terminal's locale (PYTHONIOENCODING, Windows' cp1252
    # when redirected): stdin's own encoding made a valid export's non-ASCII events fail as changed.
    encoding, errors = "utf-8", "strict"
    if args.path == "-":
        stream, universal = sys.stdin.buffer, False  # split only at "\n"
    else:
        try:
            stream = open(args.path, "rb")  # noqa: SIM115
        except OSError as exc:
            print(f"cannot read {args.path}: {exc}", file=sys.stderr)
            return 2
        universal = True  # as open(path, encoding="utf-8") reads it
    with stream:
        if stream is not sys.stdin.buffer and stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            tasks = _ranges(args.path, universal)  # workers read their share themselves
        else:
            tasks = _blocks(stream, universal)
        try:
            count, head, last_seq = _verify_tasks(
                tasks,
                allow_gaps=args.allow_gaps,
                from_genesis=not (args.partial or args.allow_gaps or args.expect_start),
                expect_start=args.expect_start,
                encoding=encoding,
                errors=errors,
                jobs=args.jobs,
            )
        except ChainError as exc:
            print(f"FAIL: {exc}", file=sys.stderr)
            if exc.reason.startswith("expected sequence 1:"):
                print(
                    "(an export filtered by since or after_seq needs --expect-start with the X-Audit-First-Seq and "
                    "X-Audit-First-Prev-Hash the registry sent, as SEQ:PREV_HASH; without them, --partial)",
                    file=sys.stderr,
                )
            return 1
    if args.expect_head and head != args.expect_head:
        print(
            f"FAIL: sequence {last_seq + 1}: the export ends at sequence {last_seq} (hash {head}) but the expected "
            f"head is {args.expect_head}: events from sequence {last_seq + 1} on are missing or were replaced",
            file=sys.stderr,
        )
        return 1
    if args.expect_count is not None and count != args.expect_count:
        change = "removed" if count < args.expect_count else "added"
        print(
            f"FAIL: the file holds {count} events but the registry selected {args.expect_count}: events were {change}",
            file=sys.stderr,
        )
        return 1
    print(f"OK: {count} events verified; last hash {head}")
    if (args.partial or args.allow_gaps) and not args.expect_start:
        print(
            "note: nothing showed that no event is missing from the start; pass --expect-start with the "
            "export's X-Audit-First-Seq and X-Audit-First-Prev-Hash",
            file=sys.stderr,
        )
    if args.allow_gaps and args.expect_count is None:
        print(
            "note: nothing showed that no event was removed from between the first and the last; pass "
            "--expect-count with the export's X-Audit-Count",
            file=sys.stderr,
        )
    if args.allow_gaps:
        print(
            "note: with --allow-gaps an event whose successor is not in the file is checked against itself "
            "only; verify a contiguous export to show none was rewritten",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    # Run as a script, this file's directory comes first on sys.path; in the project it holds modules named like
    # the standard library's (audit/selectors.py) that multiprocessing would import instead. Nothing here needs it.
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]
    sys.exit(main())
