"""Translate: the prompt's language detected and, for the models that cannot read it, an English
translation made once by a translator actor; each task then carries the prompt its model reads and
both texts. With `auto` models and the smart strategy, the models are picked again from the English
text (prompt analysis reads English), with the same seeds: the budget stage after it prices the new
plan. A resumed run's prompts were decided, and journaled, by its first run: nothing to do."""

from __future__ import annotations

from cluster.engine.translation import translate_prompt
from cluster.observability.history import safely
from cluster.pipeline.state import RunState
from cluster.planning.language import localise
from cluster.planning.planner import fallback_specs, make_plan
from models.translators import load_translation


def translate(state: RunState) -> RunState:
    if state.resumed is not None:
        return state
    request, context, plan = state.request, state.context, state.plan
    specs = list({s.id: s for s in [*plan.specs.values(), *fallback_specs(plan, context.registry)]}.values())
    result = translate_prompt(request.image_prompt, specs, request.translate, load_translation, context.events,
                              state.resident)
    if result.detection.english:
        return state
    if result.english and not request.models and plan.strategy == "smart":
        english = make_plan(request.model_copy(update={"image_prompt": result.english}), context.registry,
                            history=safely(context.history.score), base_seed=plan.base_seed)
        plan.models, plan.specs, plan.analysis, plan.tasks = english.models, english.specs, english.analysis, english.tasks
        plan.selection_reason = f"{english.selection_reason} (from the English translation)"
    state.translation = result.as_dict()
    plan.tasks = [localise(task, state.translation, plan.specs[task.model]) for task in plan.tasks]
    return state
