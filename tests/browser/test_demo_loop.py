"""The demo loop's next round in a real browser: the demo policy (``training.demo.save_tiny_llama``, as
``make run`` writes it, here without its warm-up) generates candidates into a new round, and an annotator sees them
as text, never as byte-level pieces ("ĠWould Ġyou") — the bug of the first demo policy, whose tokenizer had no
decoder."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotate.models import Role, Round
from training import launching, supervisor
from training.demo import save_tiny_llama

from .conftest import PASSWORD, login

pytestmark = pytest.mark.browser

TEXTS = ["Would you like type hints in Python?", "Tell me about the weather in Lisbon.", "Héllo wörld, how are you?"]


def test_the_next_round_reads_as_text(page, make_project, make_member, settings, tmp_path):
    settings.MODEL_ROOTS = [tmp_path / "models"]
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    save_tiny_llama(tmp_path / "models" / "tiny-demo-llama-policy", TEXTS * 5, causal=True, warmup_steps=0)
    source = make_project(slug="demo-prompts", n_items=0, overlap=1)
    from annotate import actions
    from annotate.imports import parse_items
    from tests.conftest import jsonl

    rows = [{"id": f"p{i}", "prompt": text, "responses": ["a", "b"]} for i, text in enumerate(TEXTS)]
    actions.import_items(source, parse_items(jsonl(rows), "jsonl", "pairwise"))
    target = make_project(slug="demo-next", n_items=0, overlap=1)
    make_member(target, "ann", Role.ANNOTATOR, password=PASSWORD)
    run = launching.launch_run(
        project=source,
        kind="generate",
        base_model="tiny-demo-llama-policy",
        enqueue=False,
        target_project=target,
        values={"max_new_tokens": 12, "num_samples": 2, "temperature": 1.0},
    )
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == "succeeded", run.error
    assert Round.objects.filter(project=target).exists()

    login(page, "ann")
    page.goto(f"/p/{target.slug}/annotate/")
    responses = page.locator("article.response .md")
    expect(responses).to_have_count(2)
    for text in responses.all_text_contents():
        assert "Ġ" not in text and "Ċ" not in text and "▁" not in text, text
        assert text.strip(), "an empty response"
