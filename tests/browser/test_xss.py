"""Hostile text in Chromium: imported and model-written text is shown, never run (cf. CVE-2025-25296).

Every place a page shows text that came from outside (prompts, responses, rationales, item metadata, project
names, instructions and criteria, flag notes, import files and their error messages, generated candidates, run
logs and metrics, model names and cards) gets the same payloads: markdown ``javascript:`` links, SVG with
handlers, decoded and double-encoded HTML entities, ``data:`` URLs, ``<img onerror>``, images and stylesheets
that call out to a remote host, iframes, style injection, attribute break-outs. Then every page that shows them
is opened as the people who see them, and in each:

- no dialog opens (the payloads call ``alert``),
- no request leaves for a host other than the test server (the payloads point at evil.example),
- the DOM holds no element with an ``on*`` attribute, no ``javascript:``/``data:`` URL, no iframe, object or
  embed, no script or style but the app's own, no remote image and no ``url(`` in a style attribute,
- and the payload text is on the page, shown as text (so the test looks at the right thing).

One browser context per role, one test: about 25 page loads.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from django.urls import NoReverseMatch, reverse

from annotate import actions
from annotate.models import Kind, Role

from .conftest import PASSWORD, import_rows, login

pytestmark = pytest.mark.browser

EVIL = "evil.example"
PAYLOADS = [
    "[md link](javascript:alert('md-link'))",
    "[case](JaVaScRiPt:alert('case')) [tab](java\tscript:alert('tab')) [ent](javascript&#58;alert('ent'))",
    "[ref link][r]\n\n[r]: javascript:alert('ref')",
    "<svg onload=alert('svg')><circle r=1 /></svg>",
    "<svg><script>alert('svg-script')</script></svg>",
    "&lt;script&gt;alert('entity')&lt;/script&gt; &#60;img src=x onerror=alert('dec')&#62; &amp;lt;b&amp;gt;",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) ![d](data:image/svg+xml,<svg onload=alert('d')>)",
    "<img src=x onerror=alert('img')>",
    f"![remote](https://{EVIL}/pixel.png) <img src='https://{EVIL}/x.png'>",
    f"<iframe src='https://{EVIL}/'></iframe><object data='https://{EVIL}/o'></object>",
    f"<style>body{{background:url(https://{EVIL}/bg.png)}}</style><link rel=stylesheet href=https://{EVIL}/s.css>",
    "<a href=\"javascript:alert('a')\">anchor</a> <a href='  javascript:alert(1)'>spaced</a>",
    "\"><script>alert('attr')</script> '><img src=x onerror=alert('quote')>",
    "<math><mi xlink:href=\"javascript:alert('math')\">m</mi></math><details open ontoggle=alert('toggle')>",
    "`<script>alert('code')</script>`\n\n```html\n<img src=x onerror=alert('fence')>\n```",
    '<div style="background:url(javascript:alert(\'style\'))" hx-get="/admin/" hx-trigger="load">htmx</div>',
    "<!--<img src=x onerror=alert('comment')>--> {{ 7|add:7 }} {% now 'Y' %}",
]
HOSTILE = "\n\n".join(PAYLOADS)
SHORT = "<img src=x onerror=alert('short')>"  # for one-line fields (names, criteria, model names)

DOM_CHECK = """() => {
  const bad = [], origin = location.origin;
  const urlAttributes = ['href', 'src', 'action', 'formaction', 'xlink:href', 'srcset', 'poster', 'data', 'background'];
  for (const el of document.querySelectorAll('*')) {
    const tag = el.tagName.toLowerCase();
    if (['iframe', 'frame', 'object', 'embed', 'base'].includes(tag)) bad.push('element ' + tag);
    if (tag === 'script' && !(el.src && el.src.startsWith(origin + '/static/'))) bad.push('script ' + (el.src || el.textContent.slice(0, 60)));
    if (tag === 'style' && !el.textContent.startsWith('.htmx-indicator')) bad.push('style element ' + el.textContent.slice(0, 60));  // htmx adds its own
    if (tag === 'link' && el.href && !el.href.startsWith(origin + '/')) bad.push('link ' + el.href);
    for (const a of el.attributes) {
      const name = a.name.toLowerCase(), value = a.value.replace(/[\\s\\u0000-\\u001f]/g, '').toLowerCase();
      if (name.startsWith('on')) bad.push(`${tag}[${name}="${a.value.slice(0, 60)}"]`);
      if (urlAttributes.includes(name) && /^(javascript|data|vbscript):/.test(value)) bad.push(`${tag}[${name}="${a.value.slice(0, 60)}"]`);
      if (['src', 'srcset', 'poster', 'background', 'data'].includes(name) && /^(https?:)?\\/\\//.test(value) && !value.startsWith(origin)) bad.push(`${tag}[${name}] remote ${a.value}`);
      if (name === 'style' && value.includes('url(')) bad.push(`${tag}[style="${a.value.slice(0, 60)}"]`);
      if (name.startsWith('hx-') && value.includes('/admin')) bad.push(`${tag}[${name}] injected`);
    }
  }
  return bad;
}"""


def hostile_rows(kind: str, n_responses: int, n_items: int = 2) -> list[dict]:
    rows = []
    for i in range(n_items):
        prompt = [
            {"role": "system", "content": f"System {kind} {i}: {HOSTILE}"},
            {"role": "user", "content": f"Question {kind} {i}: {HOSTILE}"},
        ]
        responses = [
            {"text": f"Answer {kind} {i}.{r}\n{PAYLOADS[(i + r) % len(PAYLOADS)]}\n{HOSTILE}", "model": SHORT}
            for r in range(n_responses)
        ]
        rows.append(
            {
                "id": f"{kind}-{i}-{SHORT}",
                "prompt": prompt,
                "responses": responses,
                "metadata": {"note": HOSTILE, SHORT: SHORT},
            }
        )
    return rows


KINDS = {Kind.PAIRWISE: 2, Kind.RANKING: 3, Kind.RATING: 2, Kind.STEPS: 2, Kind.DEMONSTRATION: 2}


def seed(tmp_path, settings) -> dict:
    """Projects of every kind full of payloads, judged and flagged by bob; a run, a model and generated candidates."""
    from training.models import MetricPoint, ModelArtifact, TrainingRun

    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    projects = {}
    for kind, n in KINDS.items():
        criteria = (
            [f"help {SHORT}", "harm\"><script>alert('crit')</script>"] if kind in (Kind.PAIRWISE, Kind.RATING) else []
        )
        project = actions.create_project(
            slug=f"x-{kind}",
            kind=kind,
            overlap=2,
            name=f"{kind} {SHORT}",
            instructions=HOSTILE,
            criteria=criteria,
        )
        import_rows(project, "".join(json.dumps(r) + "\n" for r in hostile_rows(kind, n)).encode())
        actions.add_member(project, "alice", Role.ANNOTATOR, PASSWORD)
        actions.add_member(project, "rita", Role.ADMIN, PASSWORD)
        bob = actions.add_member(project, "bob", Role.ANNOTATOR, PASSWORD).user
        if kind == Kind.PAIRWISE:
            task = actions.assign_next_task(bob, project)
            body = {"choice": "A", "strength": 2, "rationale": HOSTILE, "criteria": {c: "B" for c in criteria}}
            actions.record_judgment(task, body, "bob-1")
            actions.flag_task(actions.assign_next_task(bob, project), "unsafe", HOSTILE)
        projects[kind] = project

    pairwise = projects[Kind.PAIRWISE]
    run = TrainingRun.objects.create(
        project=pairwise,
        kind="reward",
        status="failed",
        config={"note": SHORT, "learning_rate": 0.001},
        base_model=f"/models/{SHORT}",
        error=HOSTILE,
        log_tail=HOSTILE,
        metrics={SHORT: 0.5, "loss": 0.25},
    )
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, step=s, values={"loss": 1 / s, SHORT: s / 10}) for s in (1, 2, 3)]
    )
    artifact = ModelArtifact.objects.create(
        project=pairwise,
        run=run,
        name=f"model {SHORT}",
        kind="reward",
        path="models/hostile",
        base_model=SHORT,
        criterion=SHORT,
        config={"k": SHORT},
        metrics={SHORT: 0.9},
    )
    artifact.folder.mkdir(parents=True)
    (artifact.folder / "README.md").write_text(f"---\nlicense: mit\n---\n# Card\n\n{HOSTILE}\n", encoding="utf-8")
    # Candidates a policy "generated": a new round of the ranking project, as create_candidate_round imports them.
    generated = actions.import_items(
        projects[Kind.RANKING],
        [p for p in _parse(hostile_rows("gen", 3, 1), Kind.RANKING)],
        source={"kind": "generated", "run": run.pk, "model": {"path": SHORT, "name": SHORT}},
    )
    assert generated.created == 1
    return {"projects": projects, "run": run, "artifact": artifact}


def _parse(rows, kind):
    from annotate.imports import parse_items

    return parse_items("".join(json.dumps(r) + "\n" for r in rows).encode(), kind=kind, fmt="jsonl")


def _url(name: str, *args) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:  # a page another issue has not added (yet)
        return None


class Watch:
    """Dialogs and off-site requests of one browser context, and the DOM check of each page."""

    def __init__(self, context, live_url: str):
        self.origin = urlsplit(live_url)
        self.dialogs: list[str] = []
        self.outside: list[str] = []
        self.problems: list[str] = []
        context.on("request", self._request)

    def _request(self, request) -> None:
        url = urlsplit(request.url)
        if (url.scheme, url.hostname, url.port) != (self.origin.scheme, self.origin.hostname, self.origin.port):
            self.outside.append(request.url[:120])

    def attach(self, page) -> None:
        def dismiss(dialog):
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", dismiss)

    def check(self, page, where: str, expect_text: bool = True) -> None:
        page.wait_for_load_state("load")  # images, frames and stylesheets have been requested by now
        for item in page.evaluate(DOM_CHECK):
            self.problems.append(f"{where}: {item}")
        if expect_text:
            shown = page.inner_text("main")
            if "onerror=alert(" not in shown:
                self.problems.append(f"{where}: the payload is not shown as text (the page did not render it?)")


def test_hostile_text_is_shown_never_run(new_context, live_server, tmp_path, settings):
    world = seed(tmp_path, settings)
    projects, run, artifact = world["projects"], world["run"], world["artifact"]

    # --- the annotator: every kind's annotation page, the diff panel, a flag with a hostile note ---
    context = new_context()
    watch = Watch(context, live_server.url)
    page = context.new_page()
    watch.attach(page)
    login(page, "alice")
    watch.check(page, "home (annotator)")
    for kind, project in projects.items():
        page.goto(f"/p/{project.slug}/annotate/")
        watch.check(page, f"annotate {kind}")
        assert page.locator("#task[data-task]").count() == 1, f"annotate {kind}: no task on the page: {watch.problems}"
        if kind == Kind.PAIRWISE:
            page.keyboard.press("d")  # highlight differences: the word diff of two hostile texts
            watch.check(page, "annotate pairwise, diff shown")
            page.goto(f"/p/{project.slug}/")
            watch.check(page, "project page (annotator)", expect_text=False)
    page.goto(f"/p/{projects[Kind.PAIRWISE].slug}/annotate/")
    page.keyboard.press("f")
    page.locator("details.flag input[name='category'][value='unsafe']").check()
    page.locator("details.flag textarea[name='note']").fill(HOSTILE[:2000])
    page.locator("details.flag button[type='submit']").click()
    page.locator("details.flag .message.success").wait_for()
    watch.check(page, "flag posted")

    # --- the researcher/admin: project pages, dashboard, settings, members, import errors, training pages ---
    admin_context = new_context()
    admin = Watch(admin_context, live_server.url)
    page = admin_context.new_page()
    admin.attach(page)
    login(page, "rita")
    admin.check(page, "home (admin)", expect_text=False)
    assert SHORT in page.inner_text("main")
    for kind, project in projects.items():
        # Every project page; the dashboard where criteria label the charts; settings and members once.
        shown = (
            ["project"]
            + (["dashboard"] if project.criteria else [])
            + (["project-settings", "members"] if kind == Kind.PAIRWISE else [])
        )
        for name in shown:
            page.goto(reverse(name, args=[project.slug]))
            admin.check(page, f"{name} {kind}", expect_text=name == "project")
    # An import whose rows are refused: the error message quotes the hostile id.
    page.goto(f"/p/{projects[Kind.PAIRWISE].slug}/")
    bad = "".join(
        json.dumps({"id": SHORT, "prompt": HOSTILE, "responses": [f"a{i}", HOSTILE]}) + "\n" for i in range(2)
    )
    page.locator("input[type='file'][name='file']").set_input_files(
        {"name": f"{SHORT}.jsonl", "mimeType": "application/json", "buffer": bad.encode()}
    )
    with page.expect_navigation():
        page.locator("form[action$='/import/'] button[type='submit']").click()
    assert "already used on line 1" in page.inner_text("main")
    admin.check(page, "import refused", expect_text=False)
    pages = [
        ("training runs", _url("training")),
        ("run", _url("training-run", run.pk)),
        ("models", _url("training-models")),
        ("model card", _url("training-model", artifact.pk)),
        ("rounds", _url("training-rounds", projects[Kind.RANKING].slug)),
    ]
    for where, url in pages:
        if url:
            page.goto(url)
            admin.check(page, where, expect_text=where in ("run", "model card"))

    problems = watch.problems + admin.problems
    assert not problems, "Hostile text became live content:\n" + "\n".join(problems)
    assert not watch.dialogs + admin.dialogs, f"dialogs opened: {watch.dialogs + admin.dialogs}"
    assert not watch.outside + admin.outside, f"requests left for other hosts: {watch.outside + admin.outside}"
