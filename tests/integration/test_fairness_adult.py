"""Adult traffic end to end: delayed labels move thresholds until equal opportunity holds."""

from __future__ import annotations

from pathlib import Path

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app
from guardproxy.demo.story import demo_settings, fairness_story
from guardproxy.testing import running_proxy, serving

BOUND = 0.1  # the embedded default policy's fairness.equal_opportunity.max_difference


async def test_thresholds_learned_from_labels_close_the_tpr_gap(tmp_path: Path) -> None:
    rows = list(adult_rows())
    async with serving(build_model_app()) as model_url:
        async with running_proxy(demo_settings(model_url, tmp_path)) as proxy:
            result = await fairness_story(proxy, rows)
    before, after = result.before, result.after
    print(
        f"equal_opportunity_difference {before.equal_opportunity_difference():.3f} -> "
        f"{after.equal_opportunity_difference():.3f}; accuracy {before.accuracy():.3f} -> "
        f"{after.accuracy():.3f}"
    )
    assert result.feedback == {
        "joined": 1500,
        "unknown_id": 0,
        "duplicate": 0,
        "contested": 0,
        "invalid": 0,
    }
    assert before.equal_opportunity_difference() > BOUND
    assert after.equal_opportunity_difference() < BOUND
    assert after.accuracy() > before.accuracy() - 0.02
    # the engine's own view of the labeled half agrees with the client's count
    groups = result.status["fairness"]["models"]["default|adult|"]["fairness"]["groups"]
    female_tpr = groups["Female"]["true_positive_rate"]["value"]
    assert abs(female_tpr - before.rate("Female", 1)) < 1e-9
    # every step stayed within max_step, and the table changed
    assert "published" in result.calibration[0]
