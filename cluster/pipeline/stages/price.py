"""Price: each image's cost (its share of GPU time on its replica's card, or its model's list
price), per model and for the run, what the same images would have cost on each remote model this
machine could use, and, with --budget-usd, the budget's account beside it."""

from __future__ import annotations

from cluster.pipeline.state import RunState
from cluster.planning.costs.pricing import cost_section, image_costs, remote_alternatives
from models import availability


def price(state: RunState) -> RunState:
    outcome, registry, request = state.outcome, state.context.registry, state.request
    config = state.context.cost_config()
    specs = {s.id: s for s in registry}
    costs = image_costs([f.image for f in outcome.images], state.replicas, specs, config)
    outcome.costs = {}
    for cost in costs:
        outcome.costs[cost.model] = outcome.costs.get(cost.model, 0.0) + cost.usd
    usable = [s for s in registry if not s.is_local and availability.check(s).ok]
    outcome.cost = cost_section(costs, remote_alternatives(usable, config), len(outcome.images))
    tracker = state.tracker
    if tracker is not None:
        outcome.cost["budget"] = {"budget_usd": request.budget_usd, "policy": request.budget_policy,
                                  "spent_usd_as_estimated": round(tracker.spent, 6),
                                  "estimates": {m: e.as_dict() for m, e in tracker.estimates.items()}}
    return state
