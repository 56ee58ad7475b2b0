"""AI judges' votes as ``annotate.actions.record_ai_votes`` stores them, made directly for tests that need judges
which answer exactly so (statistics, routing, training on AI votes) without running a judge."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.utils import timezone

from annotate.models import Item, Judge, JudgeVote, Judgment, Task


def make_judge(project, name: str) -> Judge:
    """A judge of ``project`` with its own user (who cannot log in), as ``actions.add_judge`` leaves it."""
    user = get_user_model().objects.create_user(f"judge.{project.pk}.{name}", is_active=False)
    return Judge.objects.create(project=project, name=name, backend="openai", model=f"model-{name}", user=user)


def stored_vote(
    judge: Judge, item: Item, answer, *, consistent=True, status="ok", data=None, confidence=0.9
) -> JudgeVote:
    """The judge's vote on ``item``: a done task of its user, an AI judgment and the JudgeVote. ``answer`` is a
    response index (a win, strength 2), "tie", "both_bad" or None (a tie); ``data`` instead for other kinds. A vote
    whose ``status`` is not ok has no judgment."""
    judgment = None
    if status == "ok":
        now = timezone.now()
        responses = list(item.responses.order_by("index"))
        task = Task.objects.create(
            project=item.project,
            item=item,
            annotator=judge.user,
            display_order=[r.pk for r in responses],
            status=Task.Status.DONE,
            leased_at=now,
            lease_expires_at=now,
            done_at=now,
        )
        if data is not None:
            fields = {"data": data}
        elif answer is None or answer in ("tie", "both_bad"):
            fields = {"outcome": answer or "tie"}
        else:
            fields = {"outcome": "win", "winner": responses[answer], "strength": 2}
        judgment = Judgment.objects.create(
            project=item.project,
            item=item,
            task=task,
            annotator=judge.user,
            idempotency_key=f"judge:{judge.pk}:{item.pk}",
            source=Judgment.Source.AI,
            **fields,
        )
    return JudgeVote.objects.create(
        judge=judge,
        item=item,
        judgment=judgment,
        status=status,
        template_hash=f"hash-{judge.name}",
        model=judge.model,
        raw=["A", "B"],
        position_consistent=consistent if status == "ok" else None,
        confidence=confidence,
    )
