"""audit/chain.py runs on Python 3.8 and later: auditors verify exports where the registry's Python is not
installed (RHEL 9 ships 3.9, RHEL 8 3.8 next to 3.6).

Two checks. One reads the source and refuses what Python 3.8 cannot run: syntax newer than 3.8, annotations
evaluated at definition time (`X | None`, `list[int]`), `zip(strict=...)`, built-in generics and `|` between types
outside annotations, and a few library names added later. It always runs, but reading is not running, so the
other runs the verifier under every Python 3.8 and 3.9 found on this machine (pyenv, or python3.8/3.9 on PATH)
on the same exports as the system's Python (batch path, lines checked one by one, worker processes, gaps, a
forged line, stdin) and wants the same output, byte for byte. Without such an interpreter it is skipped, saying
so: the source check still stands.
"""

import ast
import glob
import json
import os
import shutil
import subprocess

import pytest

from audit import chain
from tests.test_audit_chain import CHAIN_SCRIPT, raw_rehash, synthetic_lines, system_python

OLDEST = (3, 8)
SOURCE = CHAIN_SCRIPT.read_text(encoding="utf-8")

# Library names Python 3.8 does not have that a verifier could plausibly reach for.
NEWER_NAMES = {
    "removeprefix",  # 3.9
    "removesuffix",  # 3.9
    "randbytes",  # 3.9
    "waitstatus_to_exitcode",  # 3.9
    "BooleanOptionalAction",  # 3.9
    "is_relative_to",  # 3.9
    "lcm",  # 3.9
    "pairwise",  # 3.10
    "bit_count",  # 3.10
    "aiter",  # 3.10
    "anext",  # 3.10
    "batched",  # 3.12
    "tomllib",  # 3.11
    "zoneinfo",  # 3.9
    "graphlib",  # 3.9
}
BUILTIN_GENERICS = {"list", "tuple", "dict", "set", "frozenset", "type"}


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (left unevaluated by `from __future__ import annotations`)."""
    inside = set()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            annotations.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            annotations.append(node.returns)
        inside.update(id(sub) for annotation in annotations for sub in ast.walk(annotation))
    return inside


def python_38_problems(source: str) -> list[str]:
    """What in this source Python 3.8 would refuse or fail on, as "line N: what"."""
    try:
        tree = ast.parse(source, feature_version=OLDEST)  # syntax newer than 3.8 is a SyntaxError
    except SyntaxError as exc:
        return [f"line {exc.lineno}: {exc.msg}"]
    problems = []
    futures = {a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__" for a in n.names}
    if "annotations" not in futures:
        problems.append("line 1: no `from __future__ import annotations`: 3.8 evaluates `X | None`, `list[int]`")
    in_annotation = _annotation_nodes(tree)
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and any(k.arg == "strict" for k in node.keywords):
            problems.append(f"{where}: strict= (zip 3.10, map 3.14)")
        if id(node) in in_annotation:
            continue
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in BUILTIN_GENERICS:
            problems.append(f"{where}: {node.value.id}[...] evaluated (3.9)")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            operands = (node.left, node.right)
            if any(isinstance(o, ast.Constant) and o.value is None for o in operands) or any(
                isinstance(o, ast.Name) and o.id in BUILTIN_GENERICS | {"int", "str", "bytes", "float"}
                for o in operands
            ):
                problems.append(f"{where}: a type union with | evaluated (3.10)")
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
        if isinstance(node, ast.alias):
            name = node.name.split(".")[0]
        if isinstance(node, ast.ImportFrom) and node.module:
            name = node.module.split(".")[0]
        if name in NEWER_NAMES:
            problems.append(f"{where}: {name} (newer than 3.8)")
    return problems


def test_the_verifier_source_uses_nothing_newer_than_python_3_8():
    assert python_38_problems(SOURCE) == []


@pytest.mark.parametrize(
    ("snippet", "problem"),
    [
        ("def f(x: int | None) -> list[int]:\n    pass\n", "no `from __future__ import annotations`"),
        ("from __future__ import annotations\nfor a, b in zip(x, y, strict=True):\n    pass\n", "strict="),
        ("from __future__ import annotations\nT = tuple[int, int]\n", "tuple[...] evaluated"),
        ("from __future__ import annotations\nok = isinstance(x, int | None)\n", "type union"),
        ("from __future__ import annotations\nmatch x:\n    case 1:\n        pass\n", "only supported in Python 3.10"),
        ("from __future__ import annotations\nname = text.removeprefix('x')\n", "removeprefix"),
        ("from __future__ import annotations\nfrom itertools import pairwise\n", "pairwise"),
        ("from __future__ import annotations\nfrom zoneinfo import ZoneInfo\n", "zoneinfo"),
    ],
    ids=["annotations", "zip-strict", "generic", "union", "match", "removeprefix", "pairwise", "zoneinfo"],
)
def test_the_source_check_catches_what_3_8_cannot_run(snippet, problem):
    """The check itself: each of these fails on Python 3.8 (the 3.10-only ones on 3.9 too)."""
    problems = python_38_problems(snippet)
    assert any(problem in p for p in problems), problems
    fine = "from __future__ import annotations\ndef f(x: int | None) -> list[tuple[int, str]]:\n    return [x]\n"
    assert python_38_problems(fine) == []


# --- run by an older interpreter -------------------------------------------------------------------------------


def _version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-I", "-S", "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return (int(out[0]), int(out[1])) if len(out) == 2 else None


def older_pythons() -> list[tuple[str, str]]:
    """(version, path) of one interpreter per minor version from 3.8 up to, not including, 3.10."""
    pyenv = os.path.expanduser("~/.pyenv/versions")
    candidates = sorted(glob.glob(f"{pyenv}/3.8*/bin/python3") + glob.glob(f"{pyenv}/3.9*/bin/python3"))
    candidates += [p for p in (shutil.which("python3.8"), shutil.which("python3.9")) if p]
    found = {}
    for python in candidates:
        version = _version(python)
        if version is not None and OLDEST <= version < (3, 10):
            found.setdefault(version, python)
    return [(f"{major}.{minor}", python) for (major, minor), python in sorted(found.items())]


OLDER = older_pythons()


def _export_of_every_kind() -> list[bytes]:
    """4,000 chained lines (several worker tasks): canonical ones, some with escapes and a newline in a string
    (checked one by one within a batch), and one valid line in another form (re-serialized with spaces)."""
    lines = synthetic_lines(1000)
    for count, overrides in [(3, {"reason": 'line one\nline "two" \u00e9'}), (2996, {}), (1, {})]:
        lines += synthetic_lines(count, start=len(lines) + 1, prev=json.loads(lines[-1])["hash"], **overrides)
    lines[-1] = json.dumps(json.loads(lines[-1])).encode() + b"\n"  # ", " and ": ": not canonical, still valid
    mixed = lines[990:1010]  # in one block: the escaped lines go one by one, the others as a batch
    first, last = json.loads(mixed[0]), json.loads(mixed[-1])
    assert chain._suspect(b"".join(mixed))
    run = chain._scan_block(b"".join(mixed), False, "utf-8", "strict")
    assert run == (20, first["seq"], first["prev_hash"], last["seq"], last["hash"])
    return lines


def _runs(tmp_path) -> list[tuple[list[str], bytes | None, int]]:
    """(arguments, stdin or None, expected exit status) for the verifier."""
    lines = _export_of_every_kind()
    whole, after = tmp_path / "whole.ndjson", tmp_path / "after.ndjson"
    whole.write_bytes(b"".join(lines))
    after.write_bytes(b"".join(lines[30:]))
    head = json.loads(lines[-1])["hash"]
    start = f"31:{json.loads(lines[29])['hash']}"
    forged = list(lines)
    forged[2500] = raw_rehash(forged[2500].replace(b"registered", b"deleted!!!"))
    forged_file = tmp_path / "forged.ndjson"
    forged_file.write_bytes(b"".join(forged))
    gaps = tmp_path / "gaps.ndjson"
    gaps.write_bytes(b"".join(lines[5:900] + lines[1001:1003] + lines[1500:]))
    return [
        ([str(whole), "--expect-head", head, "--jobs", "1"], None, 0),
        ([str(whole), "--expect-head", head, "--jobs", "2"], None, 0),
        ([str(after), "--expect-start", start, "--expect-head", head, "--jobs", "2"], None, 0),
        ([str(after), "--expect-start", f"1:{chain.GENESIS}", "--jobs", "2"], None, 1),
        ([str(forged_file), "--expect-head", head, "--jobs", "2"], None, 1),
        ([str(gaps), "--allow-gaps", "--expect-start", start_of_file(gaps), "--jobs", "2"], None, 0),
        (["-", "--expect-head", head], b"".join(lines), 0),
        ([str(whole), "--expect-start", "31"], None, 2),
    ]


def start_of_file(path) -> str:
    first = json.loads(path.read_bytes().split(b"\n", 1)[0])
    return f"{first['seq']}:{first['prev_hash']}"


def _verify(python: str, script, args: list[str], stdin: bytes | None) -> tuple[int, str, str]:
    result = subprocess.run(
        [python, "-I", "-S", str(script), *args], input=stdin, capture_output=True, timeout=120, cwd=script.parent
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.mark.parametrize(
    "python", [p for _, p in OLDER] or [None], ids=[v for v, _ in OLDER] or ["no-python-3.8-or-3.9"]
)
def test_the_verifier_runs_on_older_python(tmp_path, python):
    if python is None:
        pytest.skip("no Python 3.8 or 3.9 here (pyenv or PATH): only the source check vouches for them")
    script = tmp_path / "verifier" / "chain.py"  # a copy, on its own, as an auditor would run it
    script.parent.mkdir()
    shutil.copyfile(CHAIN_SCRIPT, script)
    for args, stdin, status in _runs(tmp_path):
        expected = _verify(system_python(), script, args, stdin)
        assert expected[0] == status, (args, expected)
        assert _verify(python, script, args, stdin) == expected, args
    # The same output could come from lines all checked one by one: the batch path must work there too.
    lines = _export_of_every_kind()
    block = tmp_path / "block.ndjson"
    block.write_bytes(b"".join(lines[990:1010]))  # canonical lines and escaped ones (see above)
    scan = (
        f"import sys; sys.path.insert(0, {str(script.parent)!r}); import chain; "
        f"print(chain._scan_block(open({str(block)!r}, 'rb').read(), False, 'utf-8', 'strict'))"
    )
    runs = [
        subprocess.run([p, "-I", "-S", "-c", scan], capture_output=True, text=True, cwd=script.parent, timeout=60)
        for p in (system_python(), python)
    ]
    assert runs[0].stdout.startswith("(20, 991, ")
    assert [(r.returncode, r.stdout, r.stderr) for r in runs[1:]] == [(0, runs[0].stdout, "")]
