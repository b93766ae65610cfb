"""Outcome: what the run comes to. The error it ends with (the scheduler's abort, a stop signal,
the total timeout, or no image made), every planned image it neither made nor tried counted as
failed with that error, every image's score (weight-free when the scorer did not run), the quality
threshold applied (relaxed to the best score when no image reached it), the primary image, and the
report's history and metrics sections."""

from __future__ import annotations

import time

from cluster.engine.scheduler import ScheduleResult
from cluster.engine.scoring import WeightFreeScorer
from cluster.errors import ImageGenError
from cluster.observability.history import safely
from cluster.observability.metrics import run_metrics
from cluster.observability.prompt_truncation import record_truncations
from cluster.output.report import FinalImage, RunOutcome
from cluster.output.writer import display_path, file_url
from cluster.pipeline.state import RunState
from cluster.planning.request import GenerationRequest
from cluster.quality.score import QualityScore
from cluster.work import FailedImage


def outcome(state: RunState) -> RunState:
    schedule, context = state.schedule, state.context
    state.error = _ending_error(state)
    if len(state.scores) != len(schedule.images):  # the scorer could not run (e.g. Ray went away)
        fallback = WeightFreeScorer(state.scorer_failure or "the scoring stage did not complete")
        state.scores, state.scorer_info = fallback.score(schedule.images), fallback.describe()
    if state.budget_note is not None:
        schedule.degradations.insert(0, state.budget_note)
    result = build_outcome(state, schedule, state.scores, state.scorer_info, state.error, replicas=state.replicas,
                           cluster=state.cluster_info)
    result.translation = state.translation
    result.prompt_truncation = record_truncations(result.images, context.registry, context.events)
    context.events.emit("scored", images=len(result.images), primary=result.primary)
    result.history = safely(context.history.summary)() or {}
    result.metrics = run_metrics(result, schedule.max_in_flight, schedule.calls,
                                 {s.id for s in context.registry if not s.is_local}, state.free_bytes)
    state.outcome = result
    return state


def _ending_error(state: RunState) -> ImageGenError | None:
    schedule, error = state.schedule, state.error
    if error is None:
        error = schedule.aborted
    if error is None and schedule.stopped == "interrupted":
        error = ImageGenError("IMG_021", "the run was interrupted by a stop signal; what finished is kept")
    if error is None and schedule.stopped == "total_timeout":
        error = ImageGenError("IMG_003", f"the run reached total_workflow_timeout "
                                         f"({state.context.limits.perf.total_workflow_timeout:g}s) with "
                                         f"{len(schedule.images)} of {state.plan.total} image(s) made; give it more "
                                         "time with --total-timeout SECONDS (total_workflow_timeout in the limits file)")
    if error is not None and (schedule.stopped or schedule.aborted):
        _unstarted_as_failed(state, error)
    if error is None and not schedule.images and schedule.failures:
        last = schedule.failures[-1]
        error = ImageGenError(last.code, f"no image was made: {last.message}")
    return error


def _unstarted_as_failed(state: RunState, error: ImageGenError) -> None:
    """Every planned image a halted run neither made nor tried is a failure with the halt's code
    (a run can stop before its scheduler took every task: loading outlasted the total timeout)."""
    schedule = state.schedule
    accounted = {i.task.index for i in schedule.images} | {f.task.index for f in schedule.failures}
    for task in state.plan.tasks:
        if task.index not in accounted:
            schedule.failures.append(FailedImage(task, error.code, f"not started: {error.message}"))


def build_outcome(state: RunState, schedule: ScheduleResult, scores: list[QualityScore], scorer_info: dict,
                  error: ImageGenError | None, *, replicas: dict, cluster: dict) -> RunOutcome:
    """The run's outcome from what it made and how they scored (also for the partial report the
    guard writes from the journal, cluster.pipeline.partial)."""
    request, plan = state.request, state.plan
    finals = [
        FinalImage(position, image, quality, image.remote_url or file_url(request.folder_name, position))
        for position, (image, quality) in enumerate(zip(schedule.images, scores))
    ]
    degradations = list(schedule.degradations)
    relaxed, effective = _apply_threshold(finals, request, degradations)
    primary = max(range(len(finals)), key=lambda i: (finals[i].quality.overall, -i)) if finals else None
    return RunOutcome(
        request=request, plan_models=list(plan.models), selection_reason=plan.selection_reason,
        prompt_analysis=plan.analysis.as_dict(), base_seed=plan.base_seed, planned_total=plan.total,
        images=finals, failures=sorted(schedule.failures, key=lambda f: f.task.index), primary=primary,
        total_seconds=time.monotonic() - state.started, started_at=state.started_at, replicas=replicas,
        degradations=degradations, quality_relaxed=relaxed, effective_threshold=round(effective, 4),
        scorer=scorer_info, error=error, stopped=schedule.stopped, cluster=cluster,
        folder_display=display_path(request.folder_name),
        model_weights={spec.id: spec.weights for spec in state.context.registry},
        resumed=state.resumed.summary() if state.resumed is not None else None,
    )


def _apply_threshold(finals: list[FinalImage], request: GenerationRequest, degradations: list[dict]
                     ) -> tuple[bool, float]:
    """(relaxed, the threshold in effect): each image marked below the threshold or not; when none
    reaches it, the design card's Quality Relaxation keeps the best we have and says so."""
    effective = request.quality_threshold
    if not finals:
        return False, effective
    for final in finals:
        final.below_threshold = final.quality.overall < request.quality_threshold
    if not all(f.below_threshold for f in finals):
        return False, effective
    effective = max(f.quality.overall for f in finals)
    degradations.append({
        "strategy": "quality_relaxation", "trigger": "no image reached the quality threshold",
        "threshold": request.quality_threshold, "relaxed_to": round(effective, 4), "code": "IMG_004",
    })
    return True, effective
