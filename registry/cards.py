"""Model cards: the canonical JSON form, its schema, completeness, and Hugging Face import/export.

Pure functions, no database. The canonical form (schema `registry/card_schema/v1.json`) holds the
sections of Mitchell et al. 2019 "Model Cards for Model Reporting" as Markdown text, a `governance`
block, Hugging Face metadata (`metadata`), and any other Markdown sections (`other_sections`).

Hugging Face cards are README.md files: a YAML metadata block and a Markdown body. Import maps the
YAML keys to `metadata` (and a `governance` key to `governance`), and `##` headings (or deeper ones,
such as the HF template's `### Training Data`) to the canonical sections. Export writes one `##`
section per canonical section, so export -> import gives the same canonical content back.
"""

import copy
import datetime
import json
import math
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from core.errors import Conflict, InvalidInput
from core.unicode import printable, unstorable, unstorable_message

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

SCHEMA_VERSION = "1"
SCHEMA_DIR = Path(__file__).resolve().parent / "card_schema"

# The Mitchell et al. sections, in the paper's order.
MITCHELL_SECTIONS = [
    "model_details",
    "intended_use",
    "factors",
    "metrics",
    "evaluation_data",
    "training_data",
    "quantitative_analyses",
    "ethical_considerations",
    "caveats_and_recommendations",
]
GOVERNANCE = "governance"
# Every section a completeness report (and a policy's "required card sections") can name.
SECTIONS = [*MITCHELL_SECTIONS, GOVERNANCE]

# Headings written on export (and read back on import).
HEADINGS = {
    "model_details": "Model Details",
    "intended_use": "Intended Use",
    "factors": "Factors",
    "metrics": "Metrics",
    "evaluation_data": "Evaluation Data",
    "training_data": "Training Data",
    "quantitative_analyses": "Quantitative Analyses",
    "ethical_considerations": "Ethical Considerations",
    "caveats_and_recommendations": "Caveats and Recommendations",
}

# Heading text (normalized: lower case, '&' -> 'and', punctuation dropped) -> section. Covers the
# paper's names, the Hugging Face model card template and cards written by transformers' Trainer.
HEADING_ALIASES = {
    "model_details": [
        "model details",
        "model description",
        "model information",
        "model overview",
        "model summary",
    ],
    "intended_use": [
        "intended use",
        "intended uses",
        "uses",
        "direct use",
        "downstream use",
        "downstream use optional",
        "out of scope use",
        "out of scope uses",
        "intended uses and limitations",
        "primary intended uses",
    ],
    "factors": ["factors", "relevant factors", "evaluation factors"],
    "metrics": ["metrics", "evaluation metrics", "model performance measures", "performance measures"],
    "evaluation_data": ["evaluation data", "evaluation dataset", "evaluation datasets", "testing data", "test data"],
    "training_data": [
        "training data",
        "training dataset",
        "training datasets",
        "training details",
        "training procedure",
    ],
    "quantitative_analyses": [
        "quantitative analyses",
        "quantitative analysis",
        "evaluation",
        "evaluation results",
        "results",
    ],
    "ethical_considerations": [
        "ethical considerations",
        "ethics",
        "bias risks and limitations",
        "bias risks limitations",
        "risks and limitations",
        "bias and fairness",
    ],
    "caveats_and_recommendations": [
        "caveats and recommendations",
        "caveats",
        "recommendations",
        "limitations",
        "limitations and bias",
    ],
}
_ALIAS_TO_SECTION = {alias: section for section, aliases in HEADING_ALIASES.items() for alias in aliases}

# YAML keys with a place of their own in `metadata` (HF name -> canonical name).
METADATA_KEYS = {
    "license": "license",
    "license_name": "license_name",
    "license_link": "license_link",
    "datasets": "datasets",
    "metrics": "metrics",
    "base_model": "base_model",
    "library_name": "library_name",
    "pipeline_tag": "pipeline_tag",
    "tags": "tags",
    "language": "language",
    "model-index": "model_index",
}
PLACEHOLDERS = {"", "tbd", "tba", "todo", "...", "-", "more information needed"}
MAX_YAML_NODES = 100_000
# Objects and arrays nest at most this deep in card content (the card itself is level 1). Deeper content
# overflows Python's recursion limit somewhere downstream (copy.deepcopy, jsonschema, yaml.dump on export).
MAX_DEPTH = 32
# How each input writes a character beyond U+FFFF (for core.unicode.unstorable_message).
YAML_ASTRAL = "as one escape, \\U0001F600 (YAML does not pair \\u escapes)"
JSON_ASTRAL = "as a pair of surrogate escapes"
MARKDOWN_ASTRAL = "as an HTML entity, &#x1F600;"
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
# Fenced code blocks, as CommonMark has them: an opening fence is up to 3 spaces of indent and a run of 3 or
# more backticks or tildes (a backtick fence's info string may not hold a backtick); the closing fence is the
# same character, at least as many, up to 3 spaces of indent and nothing after it but spaces or tabs.
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}(?=[^`]*$)|~{3,})")
_FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
# A setext heading's underline: up to 3 spaces of indent, then a run of '=' or of '-'.
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
# A line of '-', '=', '*' or '_' alone (a setext underline or a thematic break): no content.
_RULE = re.compile(r"^[ \t]*[-=*_][-=*_ \t]*$")
# Lines that start a block of their own rather than continue a paragraph: list items, block quotes,
# code fences, indented code (tabs or 4+ spaces).
_NOT_PARAGRAPH = re.compile(r"^(?: {0,3}(?:[-+*][ \t]|\d{1,9}[.)](?:[ \t]|$)|>|`{3}|~{3})| {4}|[ ]{0,3}\t)")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# --- schema validation -------------------------------------------------------------------------


@cache
def schema(version: str = SCHEMA_VERSION) -> dict:
    with open(SCHEMA_DIR / f"v{version}.json", encoding="utf-8") as f:
        return json.load(f)


@cache
def _validator(version: str = SCHEMA_VERSION) -> "Draft202012Validator":
    from jsonschema import Draft202012Validator  # on first use: 2.4 MB a web worker that takes no card never needs

    return Draft202012Validator(schema(version))


def _path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(card)"


def _error_entries(error) -> list[tuple[str, str]]:
    """(field path, message) pairs for one jsonschema error, naming the offending field itself."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return [(_path([*path, key]), f"unknown field; allowed: {', '.join(allowed)}") for key in extra]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        return [(_path([*path, key]), "is required") for key in missing]
    if error.validator == "propertyNames":
        return [(_path(path), f"key {error.instance!r} is not allowed here: it has a field of its own")]
    if error.validator == "oneOf":
        return [(_path(path), "must be a string or a list of strings (each 1-500 characters)")]
    if error.validator == "maxLength":
        return [(_path(path), f"is longer than {error.validator_value} characters")]
    return [(_path(path), error.message)]


def _too_deep(where: str, hint: str = "") -> InvalidInput:
    message = f"{where}: objects and arrays nest more than {MAX_DEPTH} levels deep, the limit for a model card{hint}."
    return InvalidInput(f"Invalid model card. {message}", code="invalid_card", detail={where: [message]})


def _check_json_values(value, path=(), budget=None) -> None:
    """Reject what JSON (and PostgreSQL's jsonb) cannot hold: NaN/Infinity, non-string keys, NUL and lone
    surrogates (core.unicode); and content nested deeper than MAX_DEPTH. Recurses at most MAX_DEPTH deep."""
    budget = budget if budget is not None else [MAX_YAML_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidInput(f"The card has more than {MAX_YAML_NODES} values.", code="invalid_card")
    if isinstance(value, dict | list) and len(path) >= MAX_DEPTH:
        raise _too_deep(_path(path))
    if isinstance(value, str):
        _text(value, _path(path), JSON_ASTRAL)
    if isinstance(value, float) and not math.isfinite(value):
        where = _path(path)
        raise InvalidInput(
            f"Invalid model card. {where}: {value} is not a finite number.",
            code="invalid_card",
            detail={where: ["Not a finite number."]},
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                where = _path(path)
                raise InvalidInput(
                    f"Invalid model card. {where}: key {key!r} is not a string.",
                    code="invalid_card",
                    detail={where: ["Keys must be strings."]},
                )
            _text(key, _path((*path, printable(key))), JSON_ASTRAL)
            _check_json_values(item, (*path, key), budget)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_values(item, (*path, index), budget)


def _has_outer_heading(text: str) -> str | None:
    for line in _unfenced_lines(text):
        match = _HEADING.match(line)
        if match and len(match.group(1)) <= 2:
            return line.strip()
    return None


def _trim(text: str) -> str:
    """Drop leading blank lines and trailing whitespace: the form import produces."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines).rstrip()


def validate(content, version: str = SCHEMA_VERSION) -> dict:
    """Check `content` against the card schema; return it normalized (section text trimmed).

    Raises InvalidInput naming every failing field path, e.g.
    "governance.risk_class: 'extreme' is not one of ['minimal', 'limited', 'high', 'unacceptable']".
    """
    if not isinstance(content, dict):
        raise InvalidInput(
            "Invalid model card: the card content must be a JSON object.",
            code="invalid_card",
            detail={"(card)": ["Must be an object."]},
        )
    _check_json_values(content)
    content = copy.deepcopy(content)
    entries = []
    for error in sorted(_validator(version).iter_errors(content), key=lambda e: [str(p) for p in e.absolute_path]):
        entries.extend(_error_entries(error))
    for key, value in content.items():
        if isinstance(value, str):
            content[key] = value.strip() if key == "title" else _trim(value)
    # Section text must not open a new top-level section, or it would not survive an HF round trip.
    for section in ["summary", *MITCHELL_SECTIONS]:
        if isinstance(content.get(section), str) and (line := _has_outer_heading(content[section])):
            entries.append((section, f"contains the heading {line[:80]!r}; use ### or deeper inside a section"))
    for index, other in enumerate(content.get("other_sections") or []):
        if not isinstance(other, dict):
            continue
        if isinstance(other.get("title"), str):
            other["title"] = other["title"].strip()
        if isinstance(other.get("text"), str):
            other["text"] = _trim(other["text"])
            if line := _has_outer_heading(other["text"]):
                entries.append(
                    (f"other_sections[{index}].text", f"contains the heading {line[:80]!r}; use ### or deeper")
                )
        if isinstance(other.get("title"), str) and (section := section_for_heading(other["title"])):
            entries.append((f"other_sections[{index}].title", f"'{other['title']}' is the {section} section"))
    if entries:
        detail: dict[str, list[str]] = {}
        for path, message in entries:
            detail.setdefault(path, []).append(message)
        first_path, first_message = entries[0]
        more = f" (and {len(entries) - 1} more)" if len(entries) > 1 else ""
        raise InvalidInput(
            f"Invalid model card. {first_path}: {first_message}{more}", code="invalid_card", detail=detail
        )
    return content


# --- completeness ------------------------------------------------------------------------------


def _is_blank_text(text: str) -> bool:
    """Whether Markdown text holds nothing but whitespace, HTML comments, headings, rules and placeholders.

    Headings are ATX (`### Uses`) and setext ones: the paragraph directly above a `===` or `---`
    underline. A line of `-`, `=`, `*` or `_` alone (an underline, or a thematic break) carries nothing.
    """
    text = _COMMENT.sub("", text)
    text = re.sub(r"\[more information needed\]", "", text, flags=re.IGNORECASE)
    kept: list[str] = []  # "" for a blank line, a heading or a rule: each ends a paragraph
    for line in text.splitlines():
        if _SETEXT_UNDERLINE.match(line):
            while kept and kept[-1] and not _NOT_PARAGRAPH.match(kept[-1]):
                kept.pop()  # the paragraph above the underline is the heading's text
        stripped = line.strip()
        kept.append("" if not stripped or _HEADING.match(stripped) or _RULE.match(line) else line)
    lines = [line for line in kept if line]
    remaining = re.sub(r"\s+", " ", " ".join(lines)).strip().lower()
    return remaining.strip("*_ .") in PLACEHOLDERS


def _is_blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return _is_blank_text(value)
    if isinstance(value, dict):
        return all(_is_blank(v) for v in value.values())
    if isinstance(value, list):
        return all(_is_blank(v) for v in value)
    return False


def completeness(content: dict) -> dict:
    """Which of SECTIONS are missing (absent) or empty (blank, comments or placeholders only)."""
    missing = [s for s in SECTIONS if s not in content]
    empty = [s for s in SECTIONS if s in content and _is_blank(content[s])]
    return {"complete": not missing and not empty, "missing": missing, "empty": empty}


def present_sections(content: dict) -> list[str]:
    return [s for s in SECTIONS if s in content]


# --- Hugging Face import -----------------------------------------------------------------------


def _normalize_heading(title: str) -> str:
    title = _COMMENT.sub("", title).lower().replace("&", " and ")
    title = re.sub(r"[^a-z0-9]+", " ", title)
    return re.sub(r"\s+", " ", title).strip()


def section_for_heading(title: str) -> str | None:
    """The canonical section a Markdown heading names, or None."""
    return _ALIAS_TO_SECTION.get(_normalize_heading(title))


def _lines_and_code(text: str):
    """(line, is_code) for each line of `text`: is_code for fence lines and the lines between them.

    The one place for the fence rule (see _FENCE_OPEN/_FENCE_CLOSE): a block closes only on a fence of
    its own character at least as long as the opening one; an unclosed block runs to the end.
    """
    fence = None  # the open fence's character and length
    for line in text.split("\n"):
        if fence is None:
            if match := _FENCE_OPEN.match(line):
                fence = (match.group(1)[0], len(match.group(1)))
            yield line, fence is not None
            continue
        match = _FENCE_CLOSE.match(line)
        if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= fence[1]:
            fence = None
        yield line, True


def _unfenced_lines(text: str):
    """Lines outside fenced code blocks."""
    return (line for line, is_code in _lines_and_code(text) if not is_code)


class _Node:
    def __init__(self, level: int, title: str):
        self.level, self.title, self.lines, self.children = level, title, [], []


def _parse_markdown(text: str) -> tuple[str | None, list[str], list[_Node]]:
    """Split a Markdown body into (title, preamble lines, top-level nodes with nested subsections).

    Levels 1 and 2 start top-level nodes (the first H1 before any H2 is the title); deeper headings
    nest. Headings inside fenced code blocks are text.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    title, preamble, top, stack = None, [], [], []
    for line, is_code in _lines_and_code(text):
        match = None if is_code else _HEADING.match(line)
        if match is None:
            (stack[-1].lines if stack else preamble).append(line)
            continue
        level, heading = len(match.group(1)), match.group(2).strip()
        if not heading or (level > 2 and not stack):
            (stack[-1].lines if stack else preamble).append(line)  # empty heading, or one in the preamble
            continue
        if level == 1 and title is None and not top:
            title = heading
            continue
        node = _Node(level, heading)
        if level <= 2:
            top.append(node)
            stack = [node]
        else:
            while len(stack) > 1 and stack[-1].level >= level:
                stack.pop()
            stack[-1].children.append(node)
            stack.append(node)
    return title, preamble, top


def _collect(node: _Node, inherited: str | None, parts: dict, is_root: bool) -> list[str]:
    """Distribute a node's subtree over sections; return the text it contributes to `inherited`.

    A heading that names a section other than the one it sits in takes its subtree there (its
    heading dropped); other headings stay, as headings, in the enclosing section's text.
    """
    own = section_for_heading(node.title)
    if own is not None and (is_root or own != inherited):
        body = [_trim("\n".join(node.lines))]
        for child in node.children:
            body.append(_collect(child, own, parts, False))
        parts.setdefault(own, []).append("\n\n".join(p for p in body if p))
        return ""
    body = [_trim("\n".join(node.lines))]
    for child in node.children:
        body.append(_collect(child, inherited, parts, False))
    text = "\n\n".join(p for p in body if p)
    if is_root:
        return text
    if not text and node.children:
        return ""  # nothing left here once the subsections went to their own sections
    heading = "#" * node.level + " " + node.title
    return f"{heading}\n\n{text}" if text else heading


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader whose every refusal is a YAMLError saying where: its constructors raise ValueError and
    others for values such as `2024-13-45` or `!!float x`, and its composer recurses once per level."""

    def __init__(self, stream):
        super().__init__(stream)
        self.name = "README.md"  # for the marks in error messages (PyYAML: "<unicode string>")
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent) and self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nests more than {MAX_DEPTH} levels deep, the limit for a model card",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyYAML's constructors raise anything (`!!int ''`: IndexError)
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            value = repr(node.value[:80]) if isinstance(node, yaml.ScalarNode) else "this value"
            reason = f" ({exc})" if isinstance(exc, ValueError) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{value} is not a valid {tag}{reason}", node.start_mark
            ) from None


def _jsonable(value, path: str, budget: list[int], level: int = 1):
    """YAML values -> JSON values (dates as ISO strings), with bounds on expanded size and depth (YAML
    aliases can nest a value in itself). The YAML root becomes at least level 1 of the card, so refusing
    deeper than MAX_DEPTH here never refuses a card validate() would accept."""
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidInput(
            f"The README's metadata has more than {MAX_YAML_NODES} values (after expanding YAML aliases).",
            code="invalid_card",
            detail={"metadata": ["Too large."]},
        )
    if isinstance(value, dict | list | tuple | set | frozenset) and level > MAX_DEPTH:
        raise _too_deep(path, " (a YAML alias inside its own anchor, as in `&a [*a]`, nests without end)")
    if isinstance(value, dict):
        mapping = {}
        for k, v in value.items():
            key = str(k)
            where = f"{path}.{printable(key)}"
            mapping[_text(key, where)] = _jsonable(v, where, budget, level + 1)
        return mapping
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_jsonable(v, f"{path}[{i}]", budget, level + 1) for i, v in enumerate(items)]
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        raise InvalidInput(
            f"Invalid model card. {path}: binary YAML values are not supported.",
            code="invalid_card",
            detail={path: ["Binary value."]},
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(
            f"Invalid model card. {path}: {value} is not a finite number.",
            code="invalid_card",
            detail={path: ["Not a finite number."]},
        )
    if isinstance(value, str):
        return _text(value, path)
    return value


def _text(value: str, path: str, astral_escape: str = YAML_ASTRAL) -> str:
    """YAML's escapes ("\\0", "\\uD800") can make text that cannot be stored (core.unicode): refused, naming where."""
    char = unstorable(value)
    if char is not None:
        message = unstorable_message(path, char, astral_escape)
        raise InvalidInput(f"Invalid model card. {message}", code="invalid_card", detail={path: [message]})
    return value


def _metadata_block(readme: str) -> tuple[dict, str]:
    """(YAML metadata, Markdown body). We parse the YAML first, before huggingface_hub sees it: a
    bound on its expanded size (YAML aliases) and an error that says what is wrong."""
    from huggingface_hub.repocard import REGEX_YAML_BLOCK  # huggingface_hub is imported on use: ~20 MB

    match = REGEX_YAML_BLOCK.search(readme)
    if not match:
        return {}, readme
    body = readme[match.end() :]
    # Blank lines for the opening `---`: the line numbers in YAML errors are the README's.
    text = "\n" * len(_LINE_BREAK.findall(match.group(1))) + match.group(2)
    try:
        data = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"The README's YAML metadata block does not parse: {exc}",
            code="invalid_card",
            detail={"metadata": [str(exc)]},
        ) from None
    if data is None:
        return {}, body
    if not isinstance(data, dict):
        raise InvalidInput(
            "The README's YAML metadata block must be a mapping (key: value lines).",
            code="invalid_card",
            detail={"metadata": ["Must be a mapping."]},
        )
    return _jsonable(data, "metadata", [MAX_YAML_NODES]), body


def from_huggingface(readme_text: str) -> dict:
    """A Hugging Face README.md (YAML metadata + Markdown) -> canonical card content (validated)."""
    if not isinstance(readme_text, str):
        raise InvalidInput("A README must be text.", code="invalid_card")
    # PostgreSQL cannot store NUL (or a lone surrogate) anywhere in the card: one check for YAML and Markdown.
    if (char := unstorable(readme_text)) is not None:
        line = len(_LINE_BREAK.findall(readme_text, 0, readme_text.index(char))) + 1
        message = unstorable_message(f"line {line} of the README", char, MARKDOWN_ASTRAL)
        raise InvalidInput(f"Invalid model card: {message}", code="invalid_card", detail={"body": [message]})
    raw, body = _metadata_block(readme_text)
    for key in ("eval_results", "model_name", "ignore_metadata_errors"):
        if key in raw:
            raise InvalidInput(
                f"Invalid model card. metadata.{key}: not a model card metadata key (use model-index).",
                code="invalid_card",
                detail={f"metadata.{key}": ["Not allowed."]},
            )
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(readme_text) if raw else None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidInput(
            f"Invalid model card. metadata: {exc}".split(" Pass `ignore_metadata_errors")[0],
            code="invalid_card",
            detail={"metadata": [str(exc)]},
        ) from None
    data = _jsonable(card.data.to_dict(), "metadata", [MAX_YAML_NODES]) if card is not None else {}

    content: dict = {}
    metadata: dict = {}
    extra: dict = {}
    for key, value in data.items():
        if key == GOVERNANCE:
            content[GOVERNANCE] = value
        elif key in METADATA_KEYS:
            metadata[METADATA_KEYS[key]] = value
        else:
            extra[key] = value
    if extra:
        metadata["extra"] = extra

    title, preamble, top = _parse_markdown(body)
    if title is not None:
        content["title"] = title
    summary = _trim("\n".join(preamble))
    if summary:
        content["summary"] = summary
    parts: dict[str, list[str]] = {}
    others = []
    for node in top:
        text = _collect(node, None, parts, True)
        if section_for_heading(node.title) is None and (text or not node.children):
            others.append({"title": node.title, "text": text})
    for section in MITCHELL_SECTIONS:
        if section in parts:
            content[section] = "\n\n".join(p for p in parts[section] if p)
    if GOVERNANCE in content:
        content[GOVERNANCE] = content.pop(GOVERNANCE)
    if metadata:
        content["metadata"] = metadata
    if others:
        content["other_sections"] = others
    return validate(content)


# --- Hugging Face export -----------------------------------------------------------------------


def to_huggingface(content: dict) -> str:
    """Canonical card content -> a Hugging Face README.md (YAML metadata + Markdown sections)."""
    try:
        _check_json_values(content)
    except InvalidInput as exc:
        # A revision stored before a limit (e.g. MAX_DEPTH) existed stays, append-only: say so, not a 500.
        raise Conflict(
            f"This card revision cannot be written as a README.md: {exc.message.removeprefix('Invalid model card. ')} "
            "Read it as JSON (format=json), or add a revision within the limits.",
            code="card_not_exportable",
            detail=exc.detail,
        ) from None
    metadata = dict(content.get("metadata") or {})
    extra = metadata.pop("extra", {}) or {}
    model_index = metadata.pop("model_index", None)
    fields = {name: metadata[name] for name in METADATA_KEYS.values() if name in metadata and name != "model_index"}
    governance = content.get(GOVERNANCE)
    if "license" not in fields and governance and governance.get("license"):
        fields["license"] = governance["license"]
    kwargs = {**extra}
    if governance is not None:
        kwargs[GOVERNANCE] = governance
    if model_index:
        kwargs["model-index"] = model_index
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(**fields, **kwargs)

    blocks = []
    if content.get("title"):
        blocks.append(f"# {content['title']}")
    if content.get("summary"):
        blocks.append(content["summary"])
    for section in MITCHELL_SECTIONS:
        if section in content:
            blocks.append(f"## {HEADINGS[section]}" + (f"\n\n{content[section]}" if content[section] else ""))
    for other in content.get("other_sections") or []:
        blocks.append(f"## {other['title']}" + (f"\n\n{other['text']}" if other["text"] else ""))
    body = "\n\n".join(blocks) + "\n"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return str(card)
