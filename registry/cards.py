"""Model cards: the canonical JSON form, its schema, completeness, and Hugging Face import/export.

Pure functions, no database. The canonical form (schema `registry/card_schema/v1.json`) holds the
sections of Mitchell et al. 2019 "Model Cards for Model Reporting" as Markdown text, a `governance`
block, Hugging Face metadata (`metadata`), and any other Markdown sections (`other_sections`).

Hugging Face cards are README.md files: a YAML metadata block and a Markdown body. Import maps the
YAML keys to `metadata` (and a `governance` key to `governance`), and `##` headings (or deeper ones,
such as the HF template's `### Training Data`) to the canonical sections. Export writes one `##`
section per canonical section, so export -> import gives the same canonical content back: validate()
refuses what a README cannot carry and stores the rest in the form import gives (see docs/model-cards.md).

Every parse here is linear in its input: headings and HTML comments are found without backtracking
patterns, since completeness() runs on every read of a card.
"""

import copy
import datetime
import html
import json
import math
import re
import unicodedata
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from core.errors import Conflict, InvalidInput
from core.unicode import printable, unstorable, unstorable_message

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

SCHEMA_VERSION = "1"
ONE_LINE = "^[^\\n\\r]*$"  # the schema's pattern for titles
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
# An ATX heading: 1-6 '#', then the end of the line or a space or tab and the text (_heading() strips the
# text and its closing '#' sequence in Python: a pattern doing that backtracks quadratically on long lines).
_HEADING = re.compile(r"^(#{1,6})(?:[ \t](.*))?$")
# Fenced code blocks, as CommonMark has them: an opening fence is up to 3 spaces of indent and a run of 3 or
# more backticks or tildes (a backtick fence's info string may not hold a backtick); the closing fence is the
# same character, at least as many, up to 3 spaces of indent and nothing after it but spaces or tabs.
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}(?=[^`]*$)|~{3,})")
_FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
# HTML comments. A line starting (up to 3 spaces of indent) with `<!--` opens an HTML comment block, as
# CommonMark has it (see _code_blocks); `<!--` elsewhere opens an inline comment (see _strip_comments).
COMMENT_OPEN, COMMENT_CLOSE = "<!--", "-->"
_COMMENT_BLOCK = re.compile(r"^ {0,3}<!--")
# A setext heading's underline: up to 3 spaces of indent, then a run of '=' or of '-'.
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
# A line of '-', '=', '*' or '_' alone (a setext underline or a thematic break): no content.
_RULE = re.compile(r"^[ \t]*[-=*_][-=*_ \t]*$")
# Lines that start a block of their own rather than continue a paragraph: list items, block quotes,
# code fences, indented code (tabs or 4+ spaces).
_NOT_PARAGRAPH = re.compile(r"^(?: {0,3}(?:[-+*][ \t]|\d{1,9}[.)](?:[ \t]|$)|>|`{3}|~{3})| {4}|[ ]{0,3}\t)")
_NEWLINES = re.compile(r"[\r\n]+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# ModelCardData's own names (methods such as to_dict and to_yaml, dunders) cannot be metadata keys: it keeps
# every key as an attribute, so such a key replaces the method (every later export fails) or, for `self`,
# is refused by Python. ModelCardData's keyword parameters have fields of their own or are refused here.
_CARD_DATA_PARAMETERS = ("eval_results", "model_name", "ignore_metadata_errors")


def _heading_text(text: str) -> str:
    """An ATX heading's text as CommonMark reads it: no surrounding spaces or tabs, and no closing sequence
    (a run of '#' that is all there is or follows a space or tab), e.g. 'Model #' -> 'Model', 'C#' -> 'C#'."""
    text = text.strip(" \t")
    body = text.rstrip("#")
    if len(body) < len(text) and (not body or body[-1] in " \t"):
        text = body
    return text.strip()


def _heading(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading line, or None. The text is "" for an empty heading (`#`, `## ##`)."""
    match = _HEADING.match(line)
    if match is None:
        return None
    return len(match.group(1)), _heading_text(match.group(2) or "")


def _heading_line(level: int, title: str) -> str:
    """The heading line that import reads back as `title` (stripped): a title that would lose a '#' run at
    its end as a closing sequence ('Model #', '#') gets a closing sequence of its own."""
    title = _NEWLINES.sub(" ", title)  # a revision stored before titles were one line must not start a section
    line = "#" * level + " " + title
    return f"{line} #" if _heading_text(title) != title else line


def _strip_comments(text: str) -> str:
    """`text` without HTML comments (`<!--` to the next `-->`; an unclosed one runs to the end; `<!-->` and
    `<!--->` are empty ones, as in HTML and CommonMark). A find loop, linear in the text: the pattern
    `<!--.*?-->` rescans to the end from every unclosed `<!--`."""
    out, pos = [], 0
    while (start := text.find(COMMENT_OPEN, pos)) != -1:
        out.append(text[pos:start])
        end = text.find(COMMENT_CLOSE, start + 2)
        if end == -1:
            return "".join(out)
        pos = end + 3
    out.append(text[pos:])
    return "".join(out)


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


_TYPE_NAMES = {"array": "list"}  # JSON Schema's type names in a message, where they are not a YAML writer's


def _expected(fragment: dict, plural: bool = False) -> str:
    """What a schema fragment asks for, in words: 'a list of strings', 'a mapping (with type, value)'."""
    kind = fragment.get("type")
    if kind == "object":
        keys = f" (with {', '.join(fragment['required'])})" if fragment.get("required") else ""
        return ("mappings" if plural else "a mapping") + keys
    if kind == "array":
        items = fragment.get("items")
        of = f" of {_expected(items, plural=True)}" if isinstance(items, dict) and "type" in items else ""
        return ("lists" if plural else "a list") + of
    names = [_TYPE_NAMES.get(k, k) for k in (kind if isinstance(kind, list) else [kind])]
    if plural:
        return " or ".join(f"{name}s" for name in names)
    return " or ".join(f"{'an' if name[0] in 'aeiou' else 'a'} {name}" for name in names)


def _given(value) -> str:
    """A value as a message names it: its kind and (the start of) the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)} (YAML reads unquoted yes, no, on, off, true, false as booleans)"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {printable(value)[:80]!r}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    text = printable(json.dumps(value, ensure_ascii=False, default=str))
    text = text if len(text) <= 120 else text[:120] + "..."
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}: {text}"
    return f"a mapping: {text}"


def _type_message(expected: str, value) -> str:
    message = f"must be {expected}, not {_given(value)}"
    if "a string" in expected and not isinstance(value, list | dict):
        message += "; in YAML, quote it to make it text"  # a number, boolean or null, as YAML read it
    elif expected.startswith("a list") and isinstance(value, str):
        message += f"; write a list: {json.dumps([printable(value)[:80]], ensure_ascii=False)}"  # JSON and YAML
    return message


def _error_entries(error) -> list[tuple[str, str]]:
    """(field path, message) pairs for one jsonschema error, naming the offending field itself."""
    path = list(error.absolute_path)
    if error.validator == "type":
        return [(_path(path), _type_message(_expected(error.schema), error.instance))]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return [(_path([*path, key]), f"unknown field; allowed: {', '.join(allowed)}") for key in extra]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        return [(_path([*path, key]), "is required") for key in missing]
    if error.validator == "propertyNames":
        return [(_path(path), f"key {error.instance!r} is not allowed here: it has a field of its own")]
    if error.validator == "oneOf":  # string_or_list: for a list, what is wrong in it (an item that is no string)
        branches = error.validator_value
        in_list = [e for e in error.context if branches[e.relative_schema_path[0]].get("type") == "array"]
        if isinstance(error.instance, list) and in_list:
            return [entry for sub in in_list for entry in _error_entries(sub)]
        expected = "a string or a list of strings (each 1-500 characters)"
        return [(_path(path), _type_message(expected, error.instance))]
    if error.validator == "minItems":
        return [(_path(path), f"must hold at least {error.validator_value} item, not an empty list")]
    if error.validator == "maxLength":
        return [(_path(path), f"is longer than {error.validator_value} characters")]
    if error.validator in ("maxItems", "maxProperties") and isinstance(error.instance, list | dict):
        # jsonschema's message quotes the whole list: for 100,000 tags, a megabyte of message
        what = "items" if error.validator == "maxItems" else "keys"
        return [(_path(path), f"has {len(error.instance)} {what}, more than the limit of {error.validator_value}")]
    if error.validator == "pattern" and error.validator_value == ONE_LINE:
        return [(_path(path), "must be one line: it holds a line break")]
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
        _text(value, path, JSON_ASTRAL)
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
            _text(key, (*path, printable(key)), JSON_ASTRAL)
            _check_json_values(item, (*path, key), budget)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_values(item, (*path, index), budget)


def _has_outer_heading(text: str) -> str | None:
    for line in _unfenced_lines(text):
        heading = _heading(line)
        if heading and heading[0] <= 2 and heading[1]:  # an empty heading (`##`) is text to import
            return line.strip()
    return None


def _trim(text: str) -> str:
    """Drop leading blank lines and trailing whitespace: the form import produces."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    return "\n".join(lines[start:]).rstrip()


def _section_node(section: str | None, text: str) -> "_Node":
    """`text` as import parses it under a `##` heading naming `section` (None: a heading naming none).
    `text` must hold no heading of level 1 or 2 (see _has_outer_heading)."""
    return _parse_markdown(f"## {HEADINGS[section] if section else '-'}\n{text}")[2][0]


def _moving_heading(node: "_Node", inherited: str | None) -> "tuple[_Node, str] | None":
    """The first subheading under `node` that names a section other than `inherited` (import moves it, and
    what is under it, to that section; see _collect), with that section; or None."""
    for child in node.children:
        own = section_for_heading(child.title)
        if own is not None and own != inherited:
            return child, own
        if found := _moving_heading(child, inherited):
            return found
    return None


def _imported_text(section: str | None, text: str) -> str:
    """`text`, the body of `section` (None: of an other section), as import gives it back: subheadings
    written `### Title`, a blank line, then their text (trimmed). `text` has no heading that moves."""
    parts: dict[str, list[str]] = {}
    own = _collect(_section_node(section, text), None, parts, True)
    return "\n\n".join(p for p in parts[section] if p) if section else own


def _body_problems(where: str, text: str, section: str | None, nested: bool = True) -> list[tuple[str, str]]:
    """What keeps Markdown body text (trimmed) from coming back from a README as it is: a heading of its own
    level, a code block or HTML comment left open (it would take the sections after it in), a subheading
    naming another section (`nested`: import moves those; the summary keeps deeper headings as text)."""
    if line := _has_outer_heading(text):
        return [(where, f"contains the heading {line[:80]!r}; use ### or deeper inside a section")]
    entries = []
    if (opened := _open_block(text)) and opened[1] == COMMENT_OPEN:
        entries.append(
            (
                where,
                f"ends inside the HTML comment opened on its line {opened[0]} by '<!--', which is never closed: "
                "close it with '-->' (in a README the sections after it would be hidden in the comment)",
            )
        )
    elif opened:
        line_number, fence = opened
        entries.append(
            (
                where,
                f"ends inside the code block opened on its line {line_number} by {fence!r}, which is never closed: "
                f"close it with a line of {fence} (in a README the sections after it would be read as code)",
            )
        )
    if nested and (moving := _moving_heading(_section_node(section, text), section)):
        node, own = moving
        heading = "#" * node.level + " " + node.title
        entries.append(
            (
                where,
                f"contains the heading {heading[:80]!r}, which names the {own} section: a README import moves it, "
                f"and the text under it, there. Put that text in {own}, or give the heading another name",
            )
        )
    return entries


def _string_at(value, path: tuple, test) -> tuple | None:
    """The path of the first key or string in `value` that `test` holds true of, or None."""
    if isinstance(value, str):
        return path if test(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = (*path, printable(key))
            if (found := _string_at(key, where, test)) or (found := _string_at(item, where, test)):
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if found := _string_at(item, (*path, index), test):
                return found
    return None


def _holds_nel(text: str) -> bool:
    return "\x85" in text


def _ends_in_unicode_space(text: str) -> bool:
    """PyYAML writes a scalar ending in a space it does not know as one (NBSP, U+2000-U+200A, U+3000...) unquoted,
    and huggingface_hub strips the YAML it dumps and the README it writes (str.strip knows them all): the last
    value of the block loses it."""
    # Below U+00A0 (ASCII, NEL) and U+2028/U+2029 (line breaks to YAML) are quoted or escaped, so kept.
    return bool(text) and text[-1].isspace() and text[-1] >= "\xa0" and text[-1] not in "\u2028\u2029"


def _metadata_problems(content: dict) -> list[tuple[str, str]]:
    """What a README's YAML block cannot carry back as it is (see _metadata_as_exported for what it normalizes)."""
    entries = []
    for field in ("metadata", GOVERNANCE):
        if where := _string_at(content.get(field), (field,), _holds_nel):
            # huggingface_hub writes YAML with allow_unicode: PyYAML then puts U+0085 in a quoted scalar as it
            # is, and reads it back as a line break folded into a space
            message = "holds U+0085 (NEL), which the README's YAML reads back as a space: use a space or \\n"
            entries.append((_path(where), message))
        if where := _string_at(content.get(field), (field,), _ends_in_unicode_space):
            message = (
                "ends in a Unicode space (such as U+00A0 or U+3000), which the README's YAML may drop: remove it "
                "or end the text with something else"
            )
            entries.append((_path(where), message))
    metadata = content.get("metadata")
    if not isinstance(metadata, dict):
        return entries
    extra = metadata.get("extra")
    for key in extra if isinstance(extra, dict) else ():
        if _card_data_name(key):
            entries.append((f"metadata.extra.{printable(key)}", _card_data_name_message(key)))
    model_index = metadata.get("model_index")
    if isinstance(model_index, list) and model_index and isinstance(model_index[0], dict):
        entries.extend(_lossy_merges(model_index[0].get("results"), "metadata.model_index[0].results"))
    return entries


def validate(content, version: str = SCHEMA_VERSION) -> dict:
    """Check `content` against the card schema; return it normalized: in the form a README export of it
    imports back as (see docs/model-cards.md), so that import of an export gives the same content.

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
    # Section text must come back from a README as it is: see _body_problems.
    for section in ["summary", *MITCHELL_SECTIONS]:
        if isinstance(content.get(section), str):
            own = None if section == "summary" else section
            entries.extend(_body_problems(section, content[section], own, nested=own is not None))
    for index, other in enumerate(content.get("other_sections") or []):
        if not isinstance(other, dict):
            continue
        if isinstance(other.get("title"), str):
            other["title"] = other["title"].strip()
            if not other["title"]:
                entries.append((f"other_sections[{index}].title", "is blank"))
        if isinstance(other.get("text"), str):
            other["text"] = _trim(other["text"])
            entries.extend(_body_problems(f"other_sections[{index}].text", other["text"], None))
        if isinstance(other.get("title"), str) and (section := section_for_heading(other["title"])):
            entries.append((f"other_sections[{index}].title", f"'{other['title']}' is the {section} section"))
    entries.extend(_metadata_problems(content))
    _refuse(entries)

    # What a README cannot carry as it is, stored as a README carries it back.
    for key in ("title", "summary"):
        if content.get(key) == "":
            del content[key]  # export writes no empty title or summary
    if content.get("other_sections") == []:
        del content["other_sections"]  # nor an empty list of other sections
    for section in MITCHELL_SECTIONS:
        if section in content:
            content[section] = _imported_text(section, content[section])
    for other in content.get("other_sections") or []:
        other["text"] = _imported_text(None, other["text"])
    if "metadata" in content or GOVERNANCE in content:
        fields = _metadata_as_exported(content)
        content.pop("metadata", None)
        content.pop(GOVERNANCE, None)
        content.update(fields)
    # The normal form may be longer (a blank line under each subheading): its limits hold too, or it could be
    # stored but not posted again, nor imported from its own export.
    longer = [e for error in _validator(version).iter_errors(content) for e in _error_entries(error)]
    _refuse(
        [
            (path, f"{message} once stored as a README gives it back (see docs/model-cards.md)")
            for path, message in longer
        ]
    )
    return content


# --- completeness ------------------------------------------------------------------------------


# HTML tags, as CommonMark reads raw HTML: an open tag (a name, attributes with an unquoted, '...' or "..." value
# or none, an optional '/') or a closing tag. What each part may hold excludes what ends it, so a failed match
# gives back one character at a time, and one starting at a '<' ends by the next '<' or quote: linear.
_HTML_TAG = re.compile(
    r"<([A-Za-z][A-Za-z0-9-]*)(?:\s+[A-Za-z_:][A-Za-z0-9_.:-]*(?:\s*=\s*(?:[^\s\"'=<>`]+|'[^']*'|\"[^\"]*\"))?)*\s*/?>"
    r"|</[A-Za-z][A-Za-z0-9-]*\s*>"
)
# Tags that show something of their own (an image, a video, a form control...). Any other tag shows only the
# text it holds: `<br>`, `<p></p>` or `<span></span>` alone show nothing.
_CONTENT_TAGS = frozenset(
    {
        "audio",
        "button",
        "canvas",
        "embed",
        "iframe",
        "image",
        "img",
        "input",
        "math",
        "meter",
        "object",
        "picture",
        "progress",
        "select",
        "svg",
        "textarea",
        "video",
    }
)
# An HTML character reference as CommonMark reads one (named, decimal or hex, with its ';').
_CHARACTER_REFERENCE = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{0,31});")
# A link reference definition (`[label]: destination "title"`) on one line, or its label line when the
# destination is on the next (_LINK_DESTINATION): a README shows nothing of it. Bounded label, and what
# each part may hold excludes what ends it: linear.
_LINK_DEFINITION = re.compile(
    r" {0,3}\[(?:[^\[\]\\]|\\.){1,999}\]:[ \t]*"
    r"(?:(?P<destination><[^<>]*>|[^\s<]\S*)(?:[ \t]+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?[ \t]*)?$"
)
_LINK_DESTINATION = re.compile(r"[ \t]*(?:<[^<>]*>|[^\s<]\S*)(?:[ \t]+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?[ \t]*$")
# Characters a reader does not see, besides whitespace and categories Cc and Cf (format characters such as
# U+200B ZERO WIDTH SPACE, U+2060 WORD JOINER, U+FEFF, U+00AD SOFT HYPHEN): Unicode's other Default_Ignorable
# code points (variation selectors, Hangul fillers, U+034F...) and U+2800 BRAILLE PATTERN BLANK.
_IGNORABLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2065\u2800\u3164\ufe00-\ufe0f\uffa0\ufff0-\ufff8"
    "\U000e0000-\U000e0fff]+"
)
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_PLACEHOLDER_LENGTH = max(len(p) for p in PLACEHOLDERS)


def _tag_text(match: re.Match) -> str:
    """What an HTML tag shows of its own: itself for a tag of _CONTENT_TAGS (it counts as content), else nothing."""
    name = match.group(1)
    return match.group(0) if name and name.lower() in _CONTENT_TAGS else ""


def _without_link_definitions(lines: list[str]):
    """`lines`, each line of a link reference definition made blank (a label line only with the destination
    line after it: without one it is text)."""
    label = None  # a label line whose destination may be on the next line
    for line in lines:
        if label is not None:
            if _LINK_DESTINATION.match(line):
                yield from ("", "")
                label = None
                continue
            yield label
            label = None
        match = _LINK_DEFINITION.match(line)
        if match and match.group("destination") is None:
            label = line
            continue
        yield "" if match else line
    if label is not None:
        yield label


def _is_placeholder(text: str) -> bool:
    """Whether `text`, with its character references decoded, is a placeholder (see PLACEHOLDERS) once what a
    reader does not see is dropped: whitespace (as one space) and invisible characters (categories Cc and Cf,
    and _IGNORABLE)."""
    text = _IGNORABLE.sub("", _CHARACTER_REFERENCE.sub(lambda m: html.unescape(m.group(0)), text))
    kept, letters = [], 0
    for char in text:
        if char.isspace():
            kept.append(" ")
        elif unicodedata.category(char) not in _INVISIBLE_CATEGORIES:
            kept.append(char)
            if char not in "*_.":
                letters += 1
                if letters > _PLACEHOLDER_LENGTH:
                    return False  # more than any placeholder holds: no need to read the rest
    return " ".join("".join(kept).split()).lower().strip("*_ .") in PLACEHOLDERS


def _is_blank_text(text: str) -> bool:
    """Whether Markdown text holds nothing a reader sees but headings, rules and placeholders: only whitespace,
    HTML comments (and stray `-->`s), HTML tags that show nothing of their own (`<br>`, `<p></p>`), link
    reference definitions, invisible characters (format characters such as U+200B, written as they are or as
    character references such as `&nbsp;` or `&#x200B;`), headings, rules and placeholders.

    Headings are ATX (`### Uses`) and setext ones: the paragraph directly above a `===` or `---`
    underline. A line of `-`, `=`, `*` or `_` alone (an underline, or a thematic break) carries nothing.
    """
    text = _strip_comments(text).replace(COMMENT_CLOSE, "")
    text = _HTML_TAG.sub(_tag_text, text)
    text = re.sub(r"\[more information needed\]", "", text, flags=re.IGNORECASE)
    kept: list[str] = []  # "" for a blank line, a heading, a rule or a definition: each ends a paragraph
    for line in _without_link_definitions(text.splitlines()):
        if _SETEXT_UNDERLINE.match(line):
            while kept and kept[-1] and not _NOT_PARAGRAPH.match(kept[-1]):
                kept.pop()  # the paragraph above the underline is the heading's text
        stripped = line.strip()
        kept.append("" if not stripped or _heading(stripped) or _RULE.match(line) else line)
    return _is_placeholder(" ".join(line for line in kept if line))


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
    title = _strip_comments(title).lower().replace("&", " and ")
    title = re.sub(r"[^a-z0-9]+", " ", title)
    return re.sub(r"\s+", " ", title).strip()


def section_for_heading(title: str) -> str | None:
    """The canonical section a Markdown heading names, or None."""
    return _ALIAS_TO_SECTION.get(_normalize_heading(title))


def _code_blocks(text: str):
    """(line, is_code, still_open) for each line of `text`: is_code for the lines of fenced code blocks and of
    HTML comment blocks (fence lines, comment delimiters and what is between them: no heading in them is one);
    still_open is (index of the opening line, its opener: the fence, or COMMENT_OPEN) while a block is open
    after the line.

    The one place for the block rules. A fenced block (see _FENCE_OPEN/_FENCE_CLOSE) closes only on a fence of
    its own character at least as long as the opening one. An HTML comment block, as CommonMark has it, opens
    on a line starting (up to 3 spaces of indent) with `<!--` and closes on the first line holding `-->`, that
    line included (`<!-->` and `<!--->` close where they open), unless that line opens another comment after
    it: CommonMark ends the block there, but passes the line on as raw HTML, so a browser hides what follows
    in that comment. An unclosed block runs to the end. A `<!--` inside a code block, or a fence inside a
    comment, is text of that block.
    """
    opened = None  # (index of the opening line, the opener: a fence's run of backticks or tildes, or COMMENT_OPEN)
    for index, line in enumerate(text.split("\n")):
        if opened is None:
            if match := _FENCE_OPEN.match(line):
                opened = (index, match.group(1))
            elif match := _COMMENT_BLOCK.match(line):
                if _ends_in_comment(line, match.end() - 2):
                    opened = (index, COMMENT_OPEN)
                yield line, True, opened
                continue
            yield line, opened is not None, opened
            continue
        if opened[1] == COMMENT_OPEN:
            if not _ends_in_comment(line, 0):
                opened = None
            yield line, True, opened
            continue
        match = _FENCE_CLOSE.match(line)
        if match and match.group(1)[0] == opened[1][0] and len(match.group(1)) >= len(opened[1]):
            opened = None
        yield line, True, opened


def _ends_in_comment(line: str, pos: int) -> bool:
    """Whether `line`, inside an HTML comment from `pos` on, ends inside one (the same one, or another opened
    after it closes). A find loop, linear in the line."""
    while (end := line.find(COMMENT_CLOSE, pos)) != -1:
        start = line.find(COMMENT_OPEN, end + 3)
        if start == -1:
            return False
        pos = start + 2  # `<!-->` closes where it opens
    return True


def _lines_and_code(text: str):
    """(line, is_code) for each line of `text` (see _code_blocks)."""
    return ((line, is_code) for line, is_code, _ in _code_blocks(text))


def _open_block(text: str) -> tuple[int, str] | None:
    """(line number, opener) of the code block or HTML comment `text` leaves open at its end, or None. Followed
    by more Markdown (the next section of a README), such a block would take that in: as code, or hidden."""
    opened = None
    for _line, _is_code, still_open in _code_blocks(text):
        opened = still_open
    return (opened[0] + 1, opened[1]) if opened else None


def _close_block(text: str) -> str:
    """`text` with a code block or HTML comment it leaves open closed at its end: where it ends anyway in a
    README whose last section it is, so it reads the same, and can be followed by other sections."""
    opened = _open_block(text)
    if opened is None:
        return text
    return f"{text}\n{COMMENT_CLOSE if opened[1] == COMMENT_OPEN else opened[1]}"


def _unfenced_lines(text: str):
    """Lines outside fenced code blocks and HTML comment blocks."""
    return (line for line, is_code in _lines_and_code(text) if not is_code)


class _Node:
    def __init__(self, level: int, title: str):
        self.level, self.title, self.lines, self.children = level, title, [], []


def _parse_markdown(text: str) -> tuple[str | None, list[str], list[_Node]]:
    """Split a Markdown body into (title, preamble lines, top-level nodes with nested subsections).

    Levels 1 and 2 start top-level nodes (the first H1 before any H2 is the title); deeper headings
    nest. Headings inside fenced code blocks and HTML comment blocks are text (see _code_blocks).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    title, preamble, top, stack = None, [], [], []
    for line, is_code in _lines_and_code(text):
        parsed = None if is_code else _heading(line)
        if parsed is None:
            (stack[-1].lines if stack else preamble).append(line)
            continue
        level, heading = parsed
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
    heading = _heading_line(node.level, node.title)
    return f"{heading}\n\n{text}" if text else heading


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader whose every refusal is a YAMLError saying where: its constructors raise ValueError and
    others for values such as `2024-13-45` or `!!float x`, and its composer recurses once per level.

    A key written twice in one mapping is refused (PyYAML keeps the last: a second `license:` line would
    hide the first from a reader and from the allowed-licenses policy alike). Keys merged in with `<<`
    may be written again: that is what a merge is for."""

    def __init__(self, stream):
        super().__init__(stream)
        self.name = "README.md"  # for the marks in error messages (PyYAML: "<unicode string>")
        self._depth = 0
        self._checked_mappings: set[int] = set()

    def flatten_mapping(self, node):
        # Called once per mapping before its keys are merged (and again, recursively, on merged mappings:
        # by then a merged key may sit next to the same key written out, so each mapping is checked once).
        if id(node) not in self._checked_mappings:
            self._checked_mappings.add(id(node))
            first_line: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # a key that is a list or mapping is refused by PyYAML itself (unhashable)
                key = str(self.construct_object(key_node))  # 1 and '1' too (_jsonable refuses 1 anyway)
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key {printable(key)[:80]!r} is repeated (first on line {first_line[key]}): "
                        "a model card keeps one value per key, so remove one of them",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line + 1
        super().flatten_mapping(node)

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


# The YAML types JSON has no type for: what YAML reads each as, and what to write instead. PyYAML makes a set a
# sorted list and an ordered map or pairs a list of [key, value] lists: stored so, the card held a shape no one
# wrote. _YamlLoader builds a _NotJson in their place, and _jsonable refuses it naming its path. (Dates and
# times have a JSON form, their ISO 8601 text: they are stored so, as documented.)
_NOT_JSON = {
    "tag:yaml.org,2002:set": ("a set", "write a list instead: [a, b] for !!set {a, b}"),
    "tag:yaml.org,2002:omap": (
        "an ordered mapping",
        "drop the tag: [a: 1, b: 2] without it is a list of one-key mappings (or write a mapping, {a: 1, b: 2}, "
        "if the order does not matter)",
    ),
    "tag:yaml.org,2002:pairs": (
        "a list of pairs",
        "drop the tag: [a: 1, a: 2] without it is a list of one-key mappings",
    ),
    "tag:yaml.org,2002:binary": ("binary data", "drop the tag to keep the base64 text as a string (or write the text)"),
}


class _NotJson:
    """A YAML value of a type in _NOT_JSON, where it was written (its contents are not read)."""

    def __init__(self, node):
        self.tag, self.line = node.tag, node.start_mark.line + 1

    def refusal(self, where: str, what: str = "value") -> InvalidInput:
        read_as, instead = _NOT_JSON[self.tag]
        tag = self.tag.replace("tag:yaml.org,2002:", "!!")
        message = (
            f"YAML reads the {tag} {what} on line {self.line} of the README as {read_as}, "
            f"which JSON (and so a model card) has no type for: {instead}"
        )
        return InvalidInput(f"Invalid model card. {where}: {message}.", code="invalid_card", detail={where: [message]})


for _tag in _NOT_JSON:
    _YamlLoader.add_constructor(_tag, lambda _loader, node: _NotJson(node))


def _key_not_text(key, where: str) -> InvalidInput:
    """A YAML key read as null, a boolean, a number or a date: text is all JSON keeps, and `str()` of it
    (`None`, `True`) is neither what was written nor what an export would write back."""
    written = json.dumps(key, default=str).strip('"')
    message = (
        f"the key {written} is read by YAML as {_given(key)}, not as text, and a model card's keys are text: "
        f"quote it as written (e.g. '{written}': ...) or rename it"
    )
    return InvalidInput(f"Invalid model card. {where}: {message}.", code="invalid_card", detail={where: [message]})


def _jsonable(value, path: tuple, budget: list[int], level: int = 1):
    """YAML values -> JSON values (dates as ISO strings; the types of _NOT_JSON refused), with bounds on expanded
    size and depth (YAML aliases can nest a value in itself). The YAML root becomes at least level 1 of the card,
    so refusing deeper than MAX_DEPTH here never refuses a card validate() would accept. `path`: the parts of
    the value's path (see _path), joined only for a message."""
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidInput(
            f"The README's metadata has more than {MAX_YAML_NODES} values (after expanding YAML aliases).",
            code="invalid_card",
            detail={"metadata": ["Too large."]},
        )
    if isinstance(value, _NotJson):
        raise value.refusal(_path(path))
    if isinstance(value, dict | list) and level > MAX_DEPTH:
        raise _too_deep(_path(path), " (a YAML alias inside its own anchor, as in `&a [*a]`, nests without end)")
    if isinstance(value, dict):
        mapping = {}
        for key, v in value.items():
            if isinstance(key, _NotJson):
                raise key.refusal(_path(path), "key")
            if not isinstance(key, str):
                raise _key_not_text(key, _path(path))
            where = (*path, printable(key))
            mapping[_text(key, where)] = _jsonable(v, where, budget, level + 1)
        return mapping
    if isinstance(value, list):
        return [_jsonable(v, (*path, i), budget, level + 1) for i, v in enumerate(value)]
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        where = _path(path)
        raise InvalidInput(
            f"Invalid model card. {where}: {value} is not a finite number.",
            code="invalid_card",
            detail={where: ["Not a finite number."]},
        )
    if isinstance(value, str):
        return _text(value, path)
    return value


def _text(value: str, path: str | tuple, astral_escape: str = YAML_ASTRAL) -> str:
    """YAML's escapes ("\\0", "\\uD800") can make text that cannot be stored (core.unicode): refused, naming where.

    `path`: a string, or the parts of one (see _path), joined only for the message: joining it for every
    value costs the length of the path once per value (a 400 KB key over 99,000 values: up to 20 s)."""
    char = unstorable(value)
    if char is not None:
        path = path if isinstance(path, str) else _path(path)
        message = unstorable_message(path, char, astral_escape)
        raise InvalidInput(f"Invalid model card. {message}", code="invalid_card", detail={path: [message]})
    return value


def _metadata_block(readme: str) -> tuple[dict, str]:
    """(YAML metadata, Markdown body). We parse the YAML, not huggingface_hub: a bound on its expanded
    size (YAML aliases), repeated keys refused, and an error that says what is wrong."""
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
    return _jsonable(data, ("metadata",), [MAX_YAML_NODES]), body


def _card_data_name(key: str) -> bool:
    """Whether `key` is `self` or a name of huggingface_hub's ModelCardData (see _CARD_DATA_PARAMETERS)."""
    from huggingface_hub import ModelCardData

    return key == "self" or hasattr(ModelCardData, key)


def _card_data_name_message(key: str) -> str:
    return (
        f"{printable(key)[:80]!r} cannot be a metadata key: it is a name huggingface_hub's ModelCardData uses "
        "itself (`self`, a method such as to_dict or to_yaml, or an attribute), and ModelCardData keeps every "
        "metadata key as an attribute. Rename the key"
    )


def _without_none(value):
    """`value` without None in its lists and mappings, at any depth (huggingface_hub does this to a model-index)."""
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _lossy_merges(results, where: str) -> list[tuple[str, str]]:
    """(path, message) for each model-index result huggingface_hub would merge into an earlier one (it keeps
    one result per task type and dataset type, config, split and revision: the first one's names, args and
    source, and every metric) when that loses a task name, dataset name, dataset args or source. Merges
    that lose nothing are left to it: the metrics of both end up in the first."""
    if not isinstance(results, list):
        return []
    first: dict[str, tuple[int, str]] = {}
    entries = []
    for index, result in enumerate(results):
        if not isinstance(result, dict) or not isinstance(result.get("task"), dict):
            continue
        if not isinstance(result.get("dataset"), dict):
            continue
        task, dataset, source = result["task"], result["dataset"], result.get("source")
        identity = json.dumps(
            [task.get(k) for k in ("type",)] + [dataset.get(k) for k in ("type", "config", "split", "revision")],
            sort_keys=True,
            default=str,
        )
        source = [source.get("name"), source.get("url")] if isinstance(source, dict) else source
        kept = json.dumps(
            _without_none([task.get("name"), dataset.get("name"), dataset.get("args"), source]),
            sort_keys=True,
            default=str,
        )
        if identity not in first:
            first[identity] = (index, kept)
        elif first[identity][1] != kept:
            entries.append(
                (
                    f"{where}[{index}]",
                    f"has the task type and dataset (type, config, split, revision) of results[{first[identity][0]}] "
                    "but another task name, dataset name, dataset args or source: huggingface_hub keeps one result "
                    "per task and dataset, with the first one's names, so merge the two (one result, the metrics of "
                    "both) or tell them apart by dataset config, split or revision",
                )
            )
    return entries


def _refuse(entries: list[tuple[str, str]]) -> None:
    """Raise the usual invalid_card InvalidInput for (path, message) entries, if any."""
    if not entries:
        return
    entries = list(dict.fromkeys(entries))  # jsonschema reports a mapping's missing keys once per key
    detail: dict[str, list[str]] = {}
    for path, message in entries:
        detail.setdefault(path, []).append(message)
    first_path, first_message = entries[0]
    more = f" (and {len(entries) - 1} more)" if len(entries) > 1 else ""
    raise InvalidInput(f"Invalid model card. {first_path}: {first_message}{more}", code="invalid_card", detail=detail)


def _check_readme_metadata(raw: dict) -> None:
    """Refuse what huggingface_hub would mangle or fail on, before it sees the README's metadata."""
    entries = []
    for key in raw:
        if key in _CARD_DATA_PARAMETERS:
            entries.append((f"metadata.{key}", "not a model card metadata key (use model-index)"))
        elif _card_data_name(key):
            entries.append((f"metadata.{printable(key)}", _card_data_name_message(key)))
    model_index = raw.get("model-index")
    if isinstance(model_index, list) and len(model_index) > 1:
        entries.append(
            (
                "metadata.model_index",
                f"the README's model-index has {len(model_index)} entries, and a model card holds one: "
                "huggingface_hub files the results of all of them under the last one's name. Keep one entry, "
                "with every result under the model's name",
            )
        )
    elif isinstance(model_index, list) and model_index and isinstance(model_index[0], dict):
        entries.extend(_lossy_merges(model_index[0].get("results"), "metadata.model_index[0].results"))
    entries.extend(_readme_field_problems(raw))
    _refuse(entries)


def _readme_field_problems(raw: dict) -> list[tuple[str, str]]:
    """The README's known fields and governance checked against the card schema before huggingface_hub reads
    them: it iterates `tags` (a mapping's values were lost, a number failed) and picks what it knows out of
    `model-index` (unknown keys and results without metrics were lost, a wrong shape failed). Checked as it
    reads them: a null value is no value, a null inside model-index is no value."""
    entries = []
    fields = {key: value for key, value in raw.items() if key in {*METADATA_KEYS, GOVERNANCE} and value is not None}
    limit = schema()["$defs"]["string_list"]["maxItems"]
    if isinstance(fields.get("tags"), list) and len(fields["tags"]) > limit:
        # huggingface_hub removes repeated tags in time that grows with the square of their number: refused
        # by their count alone, without a look at each
        entries.append(("metadata.tags", f"has {len(fields.pop('tags'))} items, more than the limit of {limit}"))
    model_index = fields.get("model-index")
    if isinstance(model_index, list) and len(model_index) > 1:
        del fields["model-index"]  # refused with a message of its own
    elif model_index is not None:
        fields["model-index"] = _without_none(model_index)
    errors = sorted(_validator().iter_errors(_card_fields(fields)), key=lambda e: [str(p) for p in e.absolute_path])
    return entries + [entry for error in errors for entry in _error_entries(error)]


def _card_data(content: dict):
    """The huggingface_hub ModelCardData of `content`'s metadata and governance: what export writes."""
    metadata = dict(content.get("metadata") or {})
    extra = metadata.pop("extra", {}) or {}
    model_index = metadata.pop("model_index", None)
    fields = {name: metadata[name] for name in METADATA_KEYS.values() if name in metadata and name != "model_index"}
    governance = content.get(GOVERNANCE)
    if "license" not in fields and isinstance(governance, dict) and governance.get("license"):
        fields["license"] = governance["license"]
    kwargs = {**extra}
    if governance is not None:
        kwargs[GOVERNANCE] = governance
    if model_index:
        kwargs["model-index"] = model_index
    from huggingface_hub import ModelCardData

    return ModelCardData(**fields, **kwargs)


def _card_fields(data: dict) -> dict:
    """A README's metadata mapping (as huggingface_hub's to_dict gives it) -> the card's `governance` and
    `metadata` (known keys by their canonical names, any other key in `extra`), each only when non-empty.
    A `license` equal to `governance.license` is not kept apart: export writes it from there (a stored copy
    would outlive a later change of the governance license, and the README would name the old one)."""
    fields: dict = {}
    metadata: dict = {}
    extra: dict = {}
    for key, value in data.items():
        if key == GOVERNANCE:
            fields[GOVERNANCE] = value
        elif key in METADATA_KEYS:
            metadata[METADATA_KEYS[key]] = value
        else:
            extra[key] = value
    governance = fields.get(GOVERNANCE)
    if isinstance(governance, dict) and "license" in metadata and metadata["license"] == governance.get("license"):
        del metadata["license"]
    if extra:
        metadata["extra"] = extra
    if metadata:
        fields["metadata"] = metadata
    return fields


def _hf_error(exc: Exception) -> InvalidInput:
    return InvalidInput(
        f"Invalid model card. metadata: {exc}".split(" Pass `ignore_metadata_errors")[0],
        code="invalid_card",
        detail={"metadata": [str(exc)]},
    )


def _metadata_as_exported(content: dict) -> dict:
    """`content`'s governance and metadata as a README carries them back: through ModelCardData, which drops
    keys whose value is None, repeated tags, an empty model-index and None inside it, and merges model-index
    results of one task and dataset; `governance.license` is the README's `license` when metadata has none."""
    try:
        data = _card_data(content).to_dict()
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _hf_error(exc) from None
    return _card_fields(_jsonable(data, ("metadata",), [MAX_YAML_NODES]))


def from_huggingface(readme_text: str) -> dict:
    """A Hugging Face README.md (YAML metadata + Markdown) -> canonical card content (validated)."""
    if not isinstance(readme_text, str):
        raise InvalidInput("A README must be text.", code="invalid_card")
    # A byte order mark (Windows editors write one) would stand before the opening `---`: no metadata block.
    readme_text = readme_text.removeprefix("\ufeff")
    # PostgreSQL cannot store NUL (or a lone surrogate) anywhere in the card: one check for YAML and Markdown.
    if (char := unstorable(readme_text)) is not None:
        line = len(_LINE_BREAK.findall(readme_text, 0, readme_text.index(char))) + 1
        message = unstorable_message(f"line {line} of the README", char, MARKDOWN_ASTRAL)
        raise InvalidInput(f"Invalid model card: {message}", code="invalid_card", detail={"body": [message]})
    raw, body = _metadata_block(readme_text)
    if isinstance(raw.get("tags"), str):
        # `tags: foo` is one tag: huggingface_hub 2.4 reads it so, and the Hub does not check tags. Made a list
        # here, not left to huggingface_hub: its older releases made it one tag per character.
        raw["tags"] = [raw["tags"]]
    _check_readme_metadata(raw)
    data = {}
    if raw:
        from huggingface_hub import ModelCardData

        try:  # the metadata we parsed, not the README: huggingface_hub would parse it again, more leniently
            data = _jsonable(ModelCardData(**raw).to_dict(), ("metadata",), [MAX_YAML_NODES])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise _hf_error(exc) from None

    content: dict = {}
    title, preamble, top = _parse_markdown(body)
    if title is not None:
        content["title"] = title
    # A code block or HTML comment left open runs to the end of the README, so only its last text can end in
    # one: closed there, it reads the same and stays code (or hidden) when export writes other sections after it.
    summary = _close_block(_trim("\n".join(preamble)))
    if summary:
        content["summary"] = summary
    parts: dict[str, list[str]] = {}
    others = []
    for node in top:
        text = _collect(node, None, parts, True)
        if section_for_heading(node.title) is None and (text or not node.children):
            others.append({"title": node.title, "text": _close_block(text)})
    for section in MITCHELL_SECTIONS:
        if section in parts:
            content[section] = _close_block("\n\n".join(p for p in parts[section] if p))
    content.update(_card_fields(data))
    if others:
        content["other_sections"] = others
    return validate(content)


# --- Hugging Face export -----------------------------------------------------------------------


def to_huggingface(content: dict) -> str:
    """Canonical card content -> a Hugging Face README.md (YAML metadata + Markdown sections)."""

    def not_exportable(message: str, detail) -> Conflict:
        # A revision stored before a limit (e.g. MAX_DEPTH) existed stays, append-only: say so, not a 500.
        return Conflict(
            f"This card revision cannot be written as a README.md: {message} "
            "Read it as JSON (format=json), or add a revision within the limits.",
            code="card_not_exportable",
            detail=detail,
        )

    try:
        _check_json_values(content)
    except InvalidInput as exc:
        raise not_exportable(exc.message.removeprefix("Invalid model card. "), exc.detail) from None
    extra = (content.get("metadata") or {}).get("extra") or {}
    for key in extra:
        if _card_data_name(key):
            message = _card_data_name_message(key)
            raise not_exportable(f"metadata.extra.{printable(key)}: {message}.", {f"metadata.extra.{key}": [message]})

    # Text stored before a code block (or HTML comment) had to be closed is closed at its end, as import would have.
    blocks = []
    if content.get("title"):
        blocks.append(_heading_line(1, content["title"]))
    if content.get("summary"):
        blocks.append(_close_block(content["summary"]))
    for section in MITCHELL_SECTIONS:
        if section in content:
            text = _close_block(content[section])
            blocks.append(f"## {HEADINGS[section]}" + (f"\n\n{text}" if text else ""))
    for other in content.get("other_sections") or []:
        text = _close_block(other["text"])
        blocks.append(_heading_line(2, other["title"]) + (f"\n\n{text}" if text else ""))
    body = "\n\n".join(blocks) + "\n"
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(f"---\n{_card_data(content).to_yaml()}\n---\n\n{body}")
        return str(card)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise not_exportable(f"metadata: {exc}".split(" Pass `ignore_metadata_errors")[0], None) from None
