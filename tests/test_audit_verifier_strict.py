"""The offline verifier (audit/chain.py) vouches only for what a hash covers.

An export line is the event's fields plus prev_hash and hash, nothing else: a member that no hash covers, or a key
repeated in an object (json.loads keeps the last value, other readers the first), must fail naming the line, through
the Python API (verify_lines, verify_events, parse_line) and the script alike, the published head given or not. So
must a line the script cannot read at all (a huge integer, deep nesting): a FAIL, not a traceback.
"""

import json
import re

import pytest

from audit import chain
from tests.test_audit_chain import (  # noqa: F401 - exported is a fixture
    assert_fails_at,
    exported,
    head_of,
    run_verifier,
    synthetic_lines,
)


def _added_after_the_brace(line: bytes) -> bytes:  # not canonical: checked on its own
    return line.replace(b"{", b'{"approved_by":"ceo",', 1)


def _added_in_key_order(line: bytes) -> bytes:  # canonical JSON, keys sorted: offered to the batch first
    return line.replace(b'"at":', b'"approved_by":"ceo","at":', 1)


def _action_before_the_action(line: bytes) -> bytes:
    return line.replace(b'"action":', b'"action":"model.deleted","action":', 1)


def _nested_key_repeated(line: bytes) -> bytes:  # the payload's first key, given another value before its own
    return re.sub(rb'"after":\{"([^"]+)":', rb'"after":{"\1":"forged","\1":', line, count=1)


FORGERIES = {
    "member-after-the-brace": (_added_after_the_brace, "fields that no hash covers: approved_by"),
    "member-in-key-order": (_added_in_key_order, "fields that no hash covers: approved_by"),
    "action-repeated": (_action_before_the_action, "the key 'action' appears twice in one object"),
    "nested-key-repeated": (_nested_key_repeated, "the key '[a-z_]+' appears twice in one object"),
}


def _forge(lines: list[bytes], index: int, forgery: str) -> tuple[list[bytes], int, str]:
    change, reason = FORGERIES[forgery]
    forged = list(lines)
    forged[index] = change(lines[index])
    assert forged[index] != lines[index]
    event = json.loads(forged[index])  # what json.loads (Python's reader) makes of it: the untouched event
    assert event["hash"] == json.loads(lines[index])["hash"]
    return forged, event["seq"], reason


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_cli_refuses_unhashed_and_repeated_members_of_a_real_export(exported, tmp_path, forgery):  # noqa: F811
    """The hashes and links are untouched, so the published head matches: only the line's own members can fail."""
    lines, head = exported
    index = len(lines) // 2
    forged, seq, reason = _forge(lines, index, forgery)
    for args in (("--expect-head", head), ("--partial", "--expect-head", head), ()):
        result = run_verifier(tmp_path, forged, *args)
        assert_fails_at(result, seq, index + 1)
        assert re.match(rf"FAIL: sequence {seq} \(line {index + 1}\): {reason}", result.stderr), result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize("where", [0, 4, 8], ids=["first", "middle", "last"])
def test_python_api_refuses_unhashed_and_repeated_members(forgery, where):
    lines = synthetic_lines(9)
    forged, seq, reason = _forge(lines, where, forgery)
    with pytest.raises(chain.ChainError, match=rf"^sequence {seq} \(line {where + 1}\): {reason}") as failure:
        chain.verify_lines(forged, from_genesis=True)
    assert (failure.value.seq, failure.value.line) == (seq, where + 1)
    assert chain.verify_lines(lines, from_genesis=True) == (9, head_of(lines))


def test_verify_events_refuses_a_member_that_no_hash_covers():
    events = [json.loads(line) for line in synthetic_lines(3)]
    assert chain.verify_events(events, from_genesis=True)[0] == 3
    events[1]["approved_by"] = "ceo"
    with pytest.raises(chain.ChainError, match=r"^sequence 2 \(line 2\): fields that no hash covers: approved_by$"):
        chain.verify_events(events, from_genesis=True)


@pytest.mark.parametrize("value", [7, None, ["0" * 64]])
@pytest.mark.parametrize("field", ["prev_hash", "hash"])
def test_a_hash_that_is_no_string_fails_naming_the_line(field, value):
    """Where a part starts (--partial, after a gap) prev_hash is taken as given: a number there was a traceback
    (AttributeError) from the script and from verify_events, not a FAIL naming the line."""
    events = [json.loads(line) for line in synthetic_lines(3, start=5)]
    events[0][field] = value
    with pytest.raises(chain.ChainError, match=rf"^sequence 5 \(line 1\): {field} must be a string of 64 hex digits"):
        chain.verify_events(events, from_genesis=False)


def test_parse_line_refuses_a_repeated_key_naming_the_line():
    line = synthetic_lines(1, start=7)[0].decode()
    assert chain.parse_line(line, 3) == json.loads(line)
    with pytest.raises(chain.ChainError, match=r"^sequence 7 \(line 3\): the key 'action' appears twice"):
        chain.parse_line(_action_before_the_action(line.encode()).decode(), 3)
    with pytest.raises(chain.ChainError, match=r"^line 3: the key 'seq' appears twice"):  # which seq, then?
        chain.parse_line(line.replace('"seq":7', '"seq":8,"seq":7'), 3)


@pytest.mark.parametrize("forgery", ["member-in-key-order", "action-repeated"])
def test_a_large_export_refuses_them_in_worker_processes(tmp_path, forgery):
    """More than one worker's share of lines: the line reaches the workers' batch and one-by-one checks first."""
    lines = synthetic_lines(3500)
    assert sum(map(len, lines)) > 2 * chain.TASK_SIZE
    forged, seq, reason = _forge(lines, 3170, forgery)
    result = run_verifier(tmp_path, forged, "--jobs", "2", "--expect-head", head_of(lines))
    assert_fails_at(result, seq, 3171)
    assert re.search(reason, result.stderr), result.stderr


# --- lines the script cannot read: a FAIL naming the line, not a traceback ---------------------------------------

UNREADABLE = {
    "integer-of-5000-digits": (
        lambda line: line.replace(b'"n":', b'"n":' + b"9" * 5000 + b',"m":', 1),
        "not valid JSON: Exceeds the limit (4300 digits) for integer string conversion",
    ),
    "deep-nesting": (
        lambda line: line.replace(b'"tags":', b'"tags":' + b"[" * 100_000 + b"]" * 100_000 + b',"tugs":', 1),
        "not valid JSON: nested too deeply to be read",
    ),
}


@pytest.mark.parametrize("unreadable", sorted(UNREADABLE))
def test_unreadable_lines_fail_naming_the_line(tmp_path, unreadable):
    change, message = UNREADABLE[unreadable]
    lines = synthetic_lines(5)
    lines[2] = change(lines[2])
    result = run_verifier(tmp_path, [b"\n", *lines], "--expect-head", head_of(lines))
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr.startswith(f"FAIL: line 4: {message}"), result.stderr  # physical lines: a blank one first
    assert "Traceback" not in result.stderr
    with pytest.raises(chain.ChainError, match=rf"^line 3: {re.escape(message)}"):
        chain.verify_lines(lines, from_genesis=True)
