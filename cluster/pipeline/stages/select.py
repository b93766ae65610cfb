"""Select: the plan (models picked from the request, the prompt and the run history; tasks and
seeds made), or, resuming, the first run's plan as its journal recorded it: the same models, tasks,
seeds and translation (a new plan could pick other models, since selection reads the history)."""

from __future__ import annotations

from cluster.observability.history import safely
from cluster.output.durability.journal import Resumed
from cluster.pipeline.state import RunState
from cluster.planning.planner import Plan, make_plan
from cluster.planning.request import GenerationRequest
from models.prompt_analysis import analyze_prompt
from models.registry import Registry


def select(state: RunState) -> RunState:
    request, context = state.request, state.context
    if state.resumed is not None:
        state.plan = _resumed_plan(state.resumed, request, context.registry)
        state.translation = state.resumed.header.get("translation")
    else:
        state.plan = make_plan(request, context.registry, history=safely(context.history.score))
    return state


def _resumed_plan(resumed: Resumed, request: GenerationRequest, registry: Registry) -> Plan:
    header = resumed.header
    models = list(header["models"])
    return Plan(tasks=resumed.tasks, models=models, strategy=header["strategy"], base_seed=header["base_seed"],
                analysis=analyze_prompt(request.image_prompt),
                selection_reason=f"{header['selection_reason']} (resumed from the interrupted run's journal)",
                specs={m: registry.get(m) for m in models})
