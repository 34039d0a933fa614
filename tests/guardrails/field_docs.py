"""The reviewed lists of fields guards do not read, rendered for docs/guardrails-fields.md.

`python -m tests.guardrails.field_docs` rewrites the generated part of that page; a test checks
that the page matches the code. Patterns repeated at every content block, item, part or tool
are shown once, under the name of what they describe.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from sluicegate.dialects import openai_texts
from sluicegate.dialects.anthropic import texts as anthropic_texts
from sluicegate.dialects.fields import Fields
from sluicegate.dialects.responses import texts as responses_texts

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guardrails-fields.md"
BEGIN, END = "<!-- generated: fields -->", "<!-- end generated: fields -->"

_BLOCK = re.compile(
    r"^(system\.\*|messages\.\*\.content\.\*|content\.\*|content_block|message\.content\.\*)"
    r"(\.content\.\*|\.source\.content\.\*|\.content\.content)*"
)
_TOOL = re.compile(r"^((input|instructions)\.\*\.)?tools\.\*")
_PART = re.compile(r"^(input|instructions|output)\.\*\.(content|output)\.\*")
_ITEM = re.compile(r"^(input|instructions|output)\.\*")

#: (title, the reading, how its repeated prefixes are shown)
SHAPES: list[tuple[str, Fields, list[tuple[re.Pattern[str], str]]]] = [
    ("OpenAI chat completions request", openai_texts.CHAT_REQUEST, []),
    ("OpenAI legacy completions request", openai_texts.COMPLETIONS_REQUEST, []),
    ("OpenAI embeddings request", openai_texts.EMBEDDINGS_REQUEST, []),
    ("OpenAI chat completion or completion (and every translated answer)", openai_texts.ANSWER, []),
    ("OpenAI stream chunk (and every translated stream)", openai_texts.CHUNK, []),
    ("Responses request", responses_texts.REQUEST, [(_TOOL, "{tool}"), (_PART, "{part}"), (_ITEM, "{item}")]),
    ("Responses answer", responses_texts.ANSWER, [(_PART, "{part}"), (_ITEM, "{item}")]),
    ("Anthropic Messages / count_tokens request", anthropic_texts.REQUEST, [(_BLOCK, "{block}")]),
    ("Anthropic message", anthropic_texts.ANSWER, [(_BLOCK, "{block}")]),
    ("Anthropic stream event", anthropic_texts.EVENT, [(_BLOCK, "{block}")]),
]


def render() -> str:
    """The generated part of the page: per body shape, each reason and the fields it covers."""
    out = []
    for title, fields, shorten in SHAPES:
        by_reason: dict[str, list[str]] = {}
        for pattern, reason in fields.skip.items():
            for regex, label in shorten:
                if regex.match(pattern):
                    pattern = regex.sub(label, pattern, count=1)
                    break
            listed = by_reason.setdefault(reason, [])
            if pattern not in listed:
                listed.append(pattern)
        out.append(f"### {title}\n\n| not read | why |\n| --- | --- |")
        for reason, patterns in by_reason.items():
            # a pipe inside a table cell, even in code, ends the cell unless escaped
            shown = ", ".join(f"`{p}`".replace("|", "\\|") for p in patterns)
            out.append(f"| {shown} | {reason} |")
        extra = []
        if fields.json_text:
            extra.append("JSON text, read as written and decoded: " + ", ".join(f"`{p}`" for p in fields.json_text))
        if fields.token_ids:
            extra.append("token ids read as text: " + ", ".join(f"`{p}`" for p in fields.token_ids))
        out.append("\n" + "\n".join(f"- {line}" for line in extra) if extra else "")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def page_with(generated: str, page: str) -> str:
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{generated}{END}{tail}"


if __name__ == "__main__":
    PAGE.write_text(page_with(render(), PAGE.read_text()))
    sys.exit(0)
