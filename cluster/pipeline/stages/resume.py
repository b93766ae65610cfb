"""Resume: the plan against the journal. Images an interrupted run of the same request made are
kept; the rest are what this run makes. The journal is started (a fresh one records the plan in its
header), and the guard is told how to write the partial report from it if the run cannot."""

from __future__ import annotations

from cluster.pipeline.partial import write_from_journal
from cluster.pipeline.state import RunState
from cluster.planning.planner import planned_counts


def resume(state: RunState) -> RunState:
    plan, resumed, events = state.plan, state.resumed, state.context.events
    state.journal.start(state.journal_key, plan.tasks,
                        {"base_seed": plan.base_seed, "models": plan.models, "strategy": plan.strategy,
                         "selection_reason": plan.selection_reason, "created": state.started_at,
                         "translation": state.translation}, resumed)
    state.kept = list(resumed.images) if resumed is not None else []
    done = {image.task.index for image in state.kept}
    state.todo = [task for task in plan.tasks if task.index not in done]
    if resumed is not None:
        events.emit("run_resumed", kept=len(resumed.images), discarded=len(resumed.discarded),
                    missing=plan.total - len(resumed.images))
    events.emit("run_started", images=plan.total, models=",".join(plan.models), strategy=plan.strategy,
                planned=planned_counts(plan), path=state.context.path)
    if state.context.guard is not None:
        state.context.guard.attach(lambda code, message: write_from_journal(state, code, message))
    return state
