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
    html = render_markdown(
        "```python\nprint('<b>hi</b>')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[ok](https://example.com)"
    )
    assert '<pre><code class="language-python">' in html
    assert "&lt;b&gt;hi&lt;/b&gt;" in html
    assert "<table>" in html and "<td>1</td>" in html
    assert 'href="https://example.com"' in html and 'rel="noopener noreferrer nofollow"' in html


# A single newline in model text is a line break (markdown-it's "breaks"): a poem or an address keeps its lines.


def test_single_newlines_are_line_breaks():
    assert render_markdown("Roses are red,\nViolets are blue.") == "<p>Roses are red,<br>\nViolets are blue.</p>\n"
    # Windows line endings and a markdown hard break (two trailing spaces) give one <br> each, not two.
    assert render_markdown("12 High Street\r\nLondon  \nW1") == "<p>12 High Street<br>\nLondon<br>\nW1</p>\n"
    # A blank line still starts a new paragraph.
    assert render_markdown("one\n\ntwo") == "<p>one</p>\n<p>two</p>\n"


def test_line_breaks_leave_code_lists_and_tables_alone():
    assert render_markdown("```\nx = 1\ny = 2\n```") == "<pre><code>x = 1\ny = 2\n</code></pre>\n"
    assert render_markdown("    indented\n    code") == "<pre><code>indented\ncode\n</code></pre>\n"
    assert render_markdown("- first\n  still first\n- second") == (
        "<ul>\n<li>first<br>\nstill first</li>\n<li>second</li>\n</ul>\n"
    )
    table = render_markdown("| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |")
    assert "<br>" not in table and table.count("<tr>") == 3


def test_line_breaks_do_not_weaken_sanitising():
    text = "\n".join(PAYLOADS + ["<br onclick=alert(1)>", "[x](javascript:alert(1))\nend"])
    html = render_markdown(text)
    for tag, attrs in elements(html):
        assert tag in {"p", "a", "br"}, tag
        assert not any(name.startswith("on") for name in attrs), attrs
        assert not (attrs.get("href") or "").lower().startswith(("javascript:", "data:")), attrs
    # Every newline became a bare <br>; the <br> in the text stayed text.
    assert "&lt;script&gt;" in html and "&lt;br onclick" in html
    assert html.count("<br>") == text.count("\n") == len(PAYLOADS) + 2
