"""Model output is untrusted input: markdown is rendered on the server and the HTML sanitised.

markdown-it runs with raw HTML disabled, so ``<script>`` in a response is shown as text; nh3 (ammonia)
then removes anything that is not on the allow-list below, including event-handler attributes and
``javascript:``/``data:`` URLs, as a second line of defence.

A single newline is a line break (markdown-it's ``breaks``): models and people write poems, addresses and
step-by-step answers one line at a time and mean the lines, where plain markdown would join them into one
paragraph. Code blocks and tables keep their own lines untouched; a blank line still starts a paragraph.
Every page renders through here (the preloaded next task too: it is this HTML, fetched early), so the
rule is the same everywhere.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

import nh3
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    "em",
    "strong",
    "del",
    "s",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "a",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "th": {"style"}, "td": {"style"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    options = {"html": False, "linkify": False, "typographer": False, "breaks": True}
    return MarkdownIt("commonmark", options).enable("table").enable("strikethrough")


def sanitize_html(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
    )


def render_markdown(text: str) -> SafeString:
    """Markdown → sanitised HTML, safe to put in a page."""
    return mark_safe(sanitize_html(_markdown().render(text or "")))


# Words, runs of whitespace and single punctuation marks: a diff on these reads like an editor's marks
# and keeps the text's own spacing and line breaks.
_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")
# difflib is quadratic in the worst case; beyond this many tokens per side the page says so instead.
MAX_DIFF_TOKENS = 6000


@dataclass
class WordDiff:
    """Two raw texts marked up word by word: ``old`` with ``<del>`` for what only it has, ``new`` with
    ``<ins>`` for what only the other has. Both are escaped HTML, safe to put in a page."""

    old: SafeString
    new: SafeString
    changed: bool
    too_long: bool = False


def word_diff(old: str, new: str) -> WordDiff:
    """Word-level differences between two raw (not rendered) texts.

    >>> d = word_diff("the cat sat", "the dog sat")
    >>> str(d.old), str(d.new)
    ('the <del>cat</del> sat', 'the <ins>dog</ins> sat')
    """
    a, b = _TOKEN.findall(old or ""), _TOKEN.findall(new or "")
    if len(a) > MAX_DIFF_TOKENS or len(b) > MAX_DIFF_TOKENS:
        return WordDiff(escape(old or ""), escape(new or ""), changed=old != new, too_long=True)
    left: list[SafeString] = []
    right: list[SafeString] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        removed, added = "".join(a[i1:i2]), "".join(b[j1:j2])
        if op == "equal":
            left.append(escape(removed))
            right.append(escape(added))
            continue
        if removed:
            left.append(format_html("<del>{}</del>", removed))
        if added:
            right.append(format_html("<ins>{}</ins>", added))
    join = lambda parts: format_html_join("", "{}", ((part,) for part in parts))  # noqa: E731
    return WordDiff(join(left), join(right), changed=old != new)
