"""Score: every image scored together by one scorer, so scores compare (the sequential strategy's
per-image scores only steered its prompts). A scorer that fails costs the run its CLIP scores,
never its images: the outcome stage then scores them without weights and says why."""

from __future__ import annotations

from cluster.errors import describe_exception
from cluster.pipeline.state import RunState


def score(state: RunState) -> RunState:
    images = state.schedule.images
    try:
        images.sort(key=lambda i: i.task.index)
        state.scores = state.scorer.score(images)
        state.scorer_info = state.scorer.describe()
    except Exception as exc:  # noqa: BLE001 - scoring must never cost the run its images
        state.scorer_failure = f"the scorer failed: {describe_exception(exc)}"
        state.context.events.emit("scorer_failed", message=state.scorer_failure)
        state.scores = []
    finally:
        state.release_scorer()
    return state
