"""Publish: the nine step outputs (appended to $GITHUB_OUTPUT in a workflow), the run recorded in
the history (model selection and cost estimates read it), and the run_finished event."""

from __future__ import annotations

import json

from cluster import env
from cluster.observability.history import safely
from cluster.output.github_output import append_outputs
from cluster.output.report import RunOutcome
from cluster.output.writer import WrittenRun, display_path, primary_url_of
from cluster.pipeline.state import RunState


def publish(state: RunState) -> RunState:
    outcome, events, history = state.outcome, state.context.events, state.context.history
    state.outputs = step_outputs(outcome, state.written)
    if safely(history.record)(outcome) is None:
        events.emit("history_not_recorded", path=str(history.path))
    write_step_outputs(state.outputs)
    events.emit("run_finished", status=outcome.status, images=len(outcome.images),
                failed=len(outcome.failures), seconds=round(outcome.total_seconds, 2))
    return state


def step_outputs(outcome: RunOutcome, written: WrittenRun) -> dict[str, str]:
    primary = outcome.primary_image
    return {
        "image-completed": "true" if outcome.completed else "false",
        "google-image-url": primary_url_of(outcome),
        "used-model": primary.model if primary else "",
        "images-completed": str(len(outcome.images)),
        "image-urls": json.dumps(written.urls),
        "models-used": json.dumps([f.model for f in outcome.images]),
        "generation-report": display_path(written.report_path),
        "quality-scores": json.dumps([round(f.quality.overall, 4) for f in outcome.images]),
        "primary-image-index": str(outcome.primary if outcome.primary is not None else -1),
    }


def write_step_outputs(outputs: dict[str, str]) -> None:
    """Appended to $GITHUB_OUTPUT when the run is a workflow step."""
    github_output = env.github_output_path()
    if github_output is not None:
        append_outputs(github_output, outputs)
