"""Budget: with --budget-usd, the plan priced (from the run history, else list prices and
defaults), then refused (IMG_029) or degraded when over, and the tracker the scheduler holds
spending with. Run again after a stage that changed what the plan makes (translation picking
models from the English text), it prices the plan again; otherwise it changes nothing."""

from __future__ import annotations

from dataclasses import replace

from cluster.observability.history import History, safely
from cluster.output.durability.journal import Resumed
from cluster.pipeline.state import RunState
from cluster.planning.costs.budget import BudgetTracker, estimate, fit
from cluster.planning.costs.config import CostConfig, load_costs
from cluster.planning.planner import Plan, fallback_specs, planned_counts, retarget
from cluster.planning.request import GenerationRequest
from models.registry import Registry


def budget(state: RunState) -> RunState:
    done = _done(state.resumed)
    if state.priced == planned_counts(state.plan, done):
        return state
    state.tracker, state.budget_note = budget_plan(state.request, state.context.registry, state.plan,
                                                   state.context.history, state.context.costs, state.resumed)
    state.priced = planned_counts(state.plan, done)
    return state


def budget_plan(request: GenerationRequest, registry: Registry, plan: Plan, history: History,
                config: CostConfig | None, resumed: Resumed | None = None):
    """(tracker, degradation): `plan` priced, refused or degraded (changed in place) as the run's
    budget stage does; (None, None) without --budget-usd. A resumed run is priced for the images it
    has still to make; the journaled ones are kept. The dry run calls this too."""
    if request.budget_usd is None:
        return None, None
    config = config or load_costs()
    specs = {s.id: s for s in registry}
    past = safely(history.summary)() or {}
    on_cpu = runs_on_cpu(request)
    done = _done(resumed)
    counts = planned_counts(plan, done)
    estimates = estimate(counts, specs, past, config, on_cpu)
    tasks, degradation = fit([t for t in plan.tasks if t.index not in done], estimates, request.budget_usd,
                             request.budget_policy, lambda task, model: retarget(task, specs[model], request))
    if degradation is not None:
        plan.tasks = sorted([t for t in plan.tasks if t.index in done] + tasks, key=lambda t: t.index)
        plan.models = list(dict.fromkeys(t.model for t in plan.tasks))
        plan.specs = {m: specs[m] for m in plan.models}
    # the tracker prices the plan's images as `fit` did (so it accepts what the plan was accepted
    # with); a fallback model, which may take over any of them, as if it made them all
    fallbacks = {s.id: sum(counts.values()) for s in fallback_specs(plan, registry) if s.id not in estimates}
    tracker = BudgetTracker(request.budget_usd, {**estimate(fallbacks, specs, past, config, on_cpu), **estimates})
    tracker.estimates = {m: replace(estimates[m], images=n) for m, n in planned_counts(plan, done).items()}
    return tracker, degradation


def runs_on_cpu(request: GenerationRequest) -> bool:
    """Whether local models of a run on this machine (embedded, or its own cluster) run on CPUs
    because it has no GPU; a cluster elsewhere is assumed to have its cards."""
    from cluster.engine.ray_runtime import detect_local_gpus

    return request.address in (None, "local", "auto") and detect_local_gpus().count == 0


def _done(resumed: Resumed | None) -> set[int]:
    return {i.task.index for i in resumed.images} if resumed is not None else set()
