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
