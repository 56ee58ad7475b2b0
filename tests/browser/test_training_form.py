"""The launch form in a real browser: an admin picks a kind and sees only its fields (the htmx swap), the labels
never overlap at 1400 px nor at 390 px, and launching a reward run on a tiny model lands on the run page (queued:
no worker runs here). Leaves screenshots in test-output/screenshots/training-form-*.png."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from annotate.models import Role
from tests.training.conftest import models_root, preference_project, training_settings  # noqa: F401 - fixtures
from training.models import TrainingRun

from .conftest import PASSWORD, login, screenshot

pytestmark = pytest.mark.browser

# Each label's box against every other label's box and the page's width: overlapping text is what the issue saw.
LAYOUT = """() => {
  const boxes = [...document.querySelectorAll('#kind-fields .field label')]
    .filter(label => label.offsetParent !== null)
    .map(label => [label.textContent.trim(), label.getBoundingClientRect()]);
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++)
    for (let j = i + 1; j < boxes.length; j++) {
      const [a, r] = boxes[i], [b, s] = boxes[j];
      if (r.left < s.right - 1 && s.left < r.right - 1 && r.top < s.bottom - 1 && s.top < r.bottom - 1)
        overlaps.push(a + ' / ' + b);
    }
  return {labels: boxes.length, overlaps, overflow: document.documentElement.scrollWidth - window.innerWidth};
}"""


def _check_layout(page, width: int, name: str) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    for details in page.locator("#kind-fields details").all():
        details.evaluate("element => element.open = true")  # the folded options must fit too
    layout = page.evaluate(LAYOUT)
    screenshot(page, name)
    assert layout["labels"] > 20 and layout["overlaps"] == [] and layout["overflow"] <= 0, layout


def test_an_admin_launches_a_reward_run_from_the_kinds_own_form(page, preference_project, make_member, models_root):  # noqa: F811
    make_member(preference_project, "boss", Role.ADMIN, password=PASSWORD)
    login(page, "boss")
    page.goto("/training/new/?kind=dpo")
    fields = page.locator("#kind-fields")
    expect(fields).to_have_attribute("data-kind", "dpo")
    expect(page.locator('[name="opt_beta"]')).to_have_count(1)

    page.select_option("#kind-choice", "reward")  # htmx swaps the kind's fields in place
    expect(fields).to_have_attribute("data-kind", "reward")
    assert re.search(r"/training/new/\?kind=reward$", page.url)  # the kind is in the address, for a reload
    expect(page.locator('[name="opt_beta"]')).to_have_count(0)
    expect(page.locator('[name="opt_temperature"]')).to_have_count(0)
    expect(page.locator('[name="opt_objective"]')).to_have_count(1)
    expect(page.locator('input[name="kind"]')).to_have_value("reward")
    expect(page.get_by_label("LM-loss coefficient")).to_be_visible()
    legends = page.locator("#kind-fields legend").all_text_contents()
    assert legends == ["Data", "Model and method", "Optimisation"]

    _check_layout(page, 1400, "training-form-1400.png")
    _check_layout(page, 390, "training-form-390.png")
    page.set_viewport_size({"width": 1280, "height": 900})

    page.select_option('select[name="base_model"]', str(models_root / "tiny-llama"))
    page.fill('[name="opt_max_steps"]', "2")
    with page.expect_navigation():
        page.get_by_role("button", name="Launch").click()
    run = TrainingRun.objects.get()
    assert page.url.endswith(f"/training/runs/{run.pk}/")
    assert run.kind == "reward" and run.config["max_steps"] == 2 and run.snapshot is not None
    expect(page.locator("#status .status")).to_have_text("Queued")
    expect(page.locator("#messages")).not_to_contain_text("queued")
