"""Place + generate: replicas for the plan's models (placement groups of their own, or the cluster's
warm ones), the scorer made to start once they hold their groups (so it never takes a card before
them), and the scheduler running every task left within every limit, each image journaled as it
arrives. The replicas are released, or left warm, when the images are made."""

from __future__ import annotations

import threading

from cluster.engine.replicas import ReplicaPool
from cluster.engine.retry import RetryPolicy
from cluster.engine.scheduler import Scheduler, SchedulerOptions
from cluster.engine.scoring import Scorer, make_scorer
from cluster.pipeline.state import RunState
from cluster.planning.language import localise
from cluster.planning.planner import fallback_specs, planned_counts, retarget
from cluster.planning.strategies import SequentialSource, StaticSource


def generate(state: RunState) -> RunState:
    request, context, limits = state.request, state.context, state.context.limits
    pool = ReplicaPool(limits, request.max_parallel, context.events, resident=state.resident,
                       keep_alive_s=limits.scheduler.keep_alive_seconds, memory_plan=request.memory_plan,
                       leases=context.leases)
    # the scorer loads while the models load and generate
    if context.scorer is not None:
        state.scorer = context.scorer
    else:
        state.scorer = state.own_scorer = make_scorer(request.scorer, context.scoring_config(), pool.nodes,
                                                      context.events, state.resident, limits=limits, start=False)
    # comparison mode keeps one prompt for every model, so sequential variations are off there
    sequential = state.plan.strategy == "sequential" and not request.enable_comparison
    source = SequentialSource(state.todo) if sequential else StaticSource(state.todo)
    try:
        state.schedule = _scheduler(state, pool, state.scorer).run(source, state.started, done=state.kept)
        state.replicas = pool.collect_infos()
        state.cluster_info["nodes"] = len(pool.nodes)
    finally:
        pool.release()
    return state


def _scheduler(state: RunState, pool: ReplicaPool, scorer: Scorer) -> Scheduler:
    request, context, plan, registry = state.request, state.context, state.plan, state.context.registry
    fallbacks = fallback_specs(plan, registry)
    specs = {**{s.id: s for s in fallbacks}, **plan.specs}
    options = SchedulerOptions(
        events=context.events,
        stop=context.stop or threading.Event(),
        planned=planned_counts(plan, {image.task.index for image in state.kept}),
        budget=state.tracker,
        score=lambda image: scorer.score([image])[0].overall,
        # an image moving to another model gets the prompt that model reads (original or translation)
        resolve_fallback=lambda task, model: localise(retarget(task, registry.get(model), request), state.translation,
                                                      registry.get(model)),
        after_placement=scorer.start,
        on_image=state.journal.record,
    )
    retry = RetryPolicy(context.limits.scheduler, [s.id for s in fallbacks])
    return Scheduler(pool, specs, context.limits, request.max_parallel, retry, options)
