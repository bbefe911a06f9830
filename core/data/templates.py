"""Prompt templates: text with the one placeholder ``{question}``, rendered safely.

A template is *not* a Python format string. ``str.format`` would let a job reach any
field (``{foo}`` fails with a KeyError deep in a worker), attributes
(``{question.__class__}``) and format specs (``{question:>2000000000}`` allocates
gigabytes per prompt). Here the only field is the literal ``{question}``; ``{{`` and
``}}`` stand for literal braces, as in format strings, so a template that renders a
JSON-looking prompt writes ``{{"q": "{question}"}}``. Anything else in braces, and a
lone ``{`` or ``}``, is refused when the job is submitted.
"""

from __future__ import annotations

import re

PLACEHOLDER = "{question}"

#: The same rule as a regular expression, for the OpenAPI document: literal text
#: (no braces but the escapes ``{{`` and ``}}``) with at least one ``{question}``. It
#: also excludes NUL, which no job body may hold (Postgres cannot store it).
_LITERAL = r"(?:[^{}\u0000]|\{\{|\}\})"
TEMPLATE_PATTERN = rf"^{_LITERAL}*\{{question\}}(?:{_LITERAL}|\{{question\}})*$"

_TOKEN = re.compile(r"\{\{|\}\}|\{question\}|[{}]")
RULE = (
    "the only placeholder is {question} (no other fields, no format specs or conversions); "
    "write {{ and }} for literal braces"
)


def template_parts(template: str) -> list[str | None]:
    """The template as literal strings and ``None`` where the question goes.

    Raises ValueError naming the first offending brace.
    """
    parts: list[str | None] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(template):
        literal.append(template[position : match.start()])
        token = match.group()
        if token == PLACEHOLDER:
            parts.append("".join(literal))
            parts.append(None)
            literal = []
        elif token in ("{{", "}}"):
            literal.append(token[0])
        else:
            end = template.find("}", match.start()) if token == "{" else -1
            shown = template[match.start() : end + 1] if 0 <= end < match.start() + 40 else token
            raise ValueError(f"{shown!r} at character {match.start() + 1}: {RULE}")
        position = match.end()
    literal.append(template[position:])
    parts.append("".join(literal))
    if None not in parts:
        raise ValueError(f"must contain the placeholder {PLACEHOLDER}")
    return parts


def check_template(template: str) -> str:
    """``template`` if it is valid; ValueError otherwise (a pydantic validator)."""
    template_parts(template)
    return template


def render_template(template: str, question: str) -> str:
    """The template with every ``{question}`` replaced and ``{{``/``}}`` unescaped."""
    return "".join(question if part is None else part for part in template_parts(template))
