from html.parser import HTMLParser

from annotate.rendering import render_markdown


def elements(html: str) -> list[tuple[str, dict]]:
    """The real elements of an HTML fragment (escaped text is not an element)."""
    found = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Collector().feed(html)
    return found

PAYLOADS = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=2">',
    "[click](javascript:window.__pwned=3)",
    '<svg onload="window.__pwned=4"></svg>',
    '<a href="javascript:alert(1)">x</a>',
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![img](http://example.com/x.png)",
]


def test_raw_html_is_shown_as_text():
    html = render_markdown("Hello <script>window.__pwned=1</script> world")
    assert "<script" not in html and "&lt;script&gt;" in html


def test_no_payload_survives_as_markup():
    for payload in PAYLOADS:
        for tag, attrs in elements(render_markdown(payload)):
            assert tag in {"p", "a"}, (payload, tag)
            assert not any(name.startswith("on") for name in attrs), payload
            href = attrs.get("href") or ""
            assert not href.lower().startswith(("javascript:", "data:")), payload


def test_markdown_code_and_tables_render():
    html = render_markdown("```python\nprint('<b>hi</b>')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[ok](https://example.com)")
    assert '<pre><code class="language-python">' in html
    assert "&lt;b&gt;hi&lt;/b&gt;" in html
    assert "<table>" in html and "<td>1</td>" in html
    assert 'href="https://example.com"' in html and 'rel="noopener noreferrer nofollow"' in html
