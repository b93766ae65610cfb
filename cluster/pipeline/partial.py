"""The partial report when the run cannot write its own (a second signal, a cluster lost): the
journaled images, scored without weights, written with no Ray, on the guard's thread. The journal
is kept, so the same request run again makes only what is missing."""

from __future__ import annotations

from cluster.engine.scheduler import ScheduleResult
from cluster.engine.scoring import WeightFreeScorer
from cluster.errors import ImageGenError
from cluster.output.gallery import render_gallery
from cluster.output.writer import write_run
from cluster.pipeline.stages.outcome import build_outcome
from cluster.pipeline.stages.publish import step_outputs, write_step_outputs
from cluster.pipeline.state import RunState
from cluster.work import FailedImage


def write_from_journal(state: RunState, code: str, message: str) -> None:
    request, journal = state.request, state.journal
    images = sorted(list(journal.images), key=lambda i: i.task.index)
    done = {i.task.index for i in images}
    failures = [FailedImage(task, code, f"not made: {message}") for task in state.plan.tasks if task.index not in done]
    schedule = ScheduleResult(images=images, failures=failures,
                              stopped="interrupted" if code == "IMG_021" else None)
    scorer = WeightFreeScorer(f"{message}; scored without a CLIP model")
    outcome = build_outcome(state, schedule, scorer.score(images), scorer.describe(), ImageGenError(code, message),
                            replicas={}, cluster={"address": request.address or "embedded", "notes": [message]})
    outcome.cost = {"note": "not priced: the run stopped before its replicas reported their time and cards"}
    written = write_run(outcome, gallery=render_gallery)
    journal.close()
    outputs = step_outputs(outcome, written)
    write_step_outputs(outputs)
    state.context.guard.say(f"{outcome.status}: {len(outcome.images)}/{outcome.planned_total} images -> "
                            f"{outcome.folder_display} (error {code}; report: {outputs['generation-report']})")
