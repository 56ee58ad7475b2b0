"""Writes panel_votes.jsonl: 150 raters per item on two items (a safety-style panel), seeded."""

import json
import random
from pathlib import Path

rng = random.Random(150)
with (Path(__file__).parent / "panel_votes.jsonl").open("w") as out:
    for item in ("q1", "q2"):
        for rater in range(150):
            winner = None if rng.random() < 0.2 else (0 if rng.random() < 0.7 else 1)
            out.write(json.dumps({"item": item, "annotator": f"rater-{rater:03d}", "winner": winner}) + "\n")
