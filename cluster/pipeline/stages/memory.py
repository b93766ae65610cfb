"""Memory: every local model of the plan has a memory plan that some node of the cluster can hold
(IMG_010 naming what it needs and what the nodes have; CUDA-only plans and host RAM on a cluster
without GPUs included), decided against the cluster's totals before any placement group waits."""

from __future__ import annotations

from cluster.engine.nodes import cluster_nodes
from cluster.pipeline.state import RunState
from cluster.planning.feasibility import check_runnable
from cluster.planning.limits import Limits
from cluster.planning.placement import NodeCapacity
from cluster.planning.planner import Plan, model_sizes
from cluster.planning.request import GenerationRequest


def memory(state: RunState) -> RunState:
    check_fits(state.request, state.plan, cluster_nodes(), state.context.limits)
    return state


def check_fits(request: GenerationRequest, plan: Plan, nodes: list[NodeCapacity], limits: Limits) -> None:
    """IMG_010 when a model of `plan` has no plan some node of `nodes` holds. The dry run calls this too."""
    check_runnable(list(plan.specs.values()), nodes, model_sizes(plan), request.memory_plan,
                   limits.perf.memory_limit_per_image)
