from django import template
from django.utils.html import format_html

from ..rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str):
    return render_markdown(text)


@register.filter
def response_markdown(text: str):
    """A model's response as annotators see it. An empty one (a model that answered nothing: a real output, and
    "the other one is better" a real judgment) says so; an empty box would read as a page that failed to load."""
    if not text.strip():
        return format_html('<p class="empty-response">{}</p>', "Empty: the model answered nothing.")
    return render_markdown(text)


@register.filter
def get_item(mapping, key):
    return mapping.get(key)


@register.filter
def prompt_preview(prompt, length: int = 160) -> str:
    """The last user message of a prompt (chat messages), on one line and cut to ``length`` characters; escaped by
    the template like any text."""
    messages = [m for m in prompt or [] if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"] or messages
    text = str(users[-1].get("content", "")) if users else ""
    text = " ".join(text.split())
    more = f" (+{len(messages) - 1} earlier messages)" if len(messages) > 1 else ""
    return (text[: length - 1] + "…" if len(text) > length else text) + more


@register.filter
def query_params(query, which: str) -> str:
    """The browser's query string for the previous or next page (``which``: "prev" or "next")."""
    from urllib.parse import urlencode

    page = query.page - 1 if which == "prev" else query.page + 1
    return urlencode(query.as_params(page=page))


@register.filter
def seconds(milliseconds) -> str:
    """A time on task: "4.2 s", "3 min 5 s"."""
    total = int(milliseconds) / 1000
    if total < 60:
        return f"{total:.1f} s"
    return f"{int(total // 60)} min {int(total % 60)} s"
