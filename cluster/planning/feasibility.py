"""Can a replica of this model run on this cluster at all? One answer for the run and the dry run.

A replica needs a memory plan (the planner's, `cluster.planning.memory.replica_plan`), a bundle some node
can hold (`cluster.planning.placement`), and, on a cluster without GPUs, a plan the CPU can carry out and
host RAM for the weights in float32. The run asks before it writes anything (a model that can
never run here refuses the run with IMG_010, leaving no folder and no journal) and again when it
places each model; `generate --dry-run` asks the same questions of the same nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.errors import ImageGenError
from cluster.planning.memory.planner import HOST_MARGIN_GB, NEEDS_CUDA, MemoryPlan, weights_gb
from cluster.planning.memory.replica_plan import plan_replica, sizes_for
from cluster.planning.placement import NodeCapacity, check_placeable, describe, host_bytes, replica_bundle, uses_gpus
from models.registry import ModelSpec

# What the CPU holds a pipeline in (the generator's dtype without CUDA).
CPU_DTYPE_BYTES = 4


@dataclass(frozen=True)
class Fit:
    plan: MemoryPlan
    bundle: dict[str, float]
    nodes: list[NodeCapacity]


def batch_cap(spec: ModelSpec, nodes: list[NodeCapacity], memory_per_image: int) -> int:
    """The spec's cap, lowered so that one replica never reserves more than half of a node's host
    memory (memory_limit_per_image)."""
    batch = spec.max_batch_size
    biggest = max((n.memory_bytes for n in nodes), default=0)
    if memory_per_image > 0 and biggest > 0:
        batch = max(1, min(batch, int(biggest / 2 // memory_per_image)))
    return batch


def checked_plan(spec: ModelSpec, nodes: list[NodeCapacity], free_by_node: dict | None, width: int, height: int,
                 cap: int, run_plan: str | None) -> MemoryPlan:
    """The planner's plan for `spec` on `nodes`, or IMG_010 when it cannot run there."""
    plan = plan_replica(spec, nodes, free_by_node, width, height, cap, run_plan)
    if spec.is_local and not uses_gpus(nodes):
        _check_cpu(spec, plan, nodes)
    return plan


def replica_fit(spec: ModelSpec, nodes: list[NodeCapacity], plan: MemoryPlan, memory_per_image: int) -> Fit:
    """The bundle one replica holding `plan` asks Ray for, and the nodes that could ever hold it
    (IMG_010 naming need and supply when none can)."""
    batch = plan.batch if spec.is_local else spec.max_batch_size
    bundle = replica_bundle(spec, nodes, host_bytes(spec, plan, batch, memory_per_image), batch,
                            gpu_gb=plan.gpu_gb or None)
    return Fit(plan, bundle, check_placeable(spec, bundle, nodes))


def fit_on(spec: ModelSpec, nodes: list[NodeCapacity], width: int, height: int, run_plan: str | None,
           memory_per_image: int, cap: int | None = None, free_by_node: dict | None = None) -> Fit:
    """Plan and bundle of a replica of `spec` on `nodes`, or IMG_010."""
    cap = cap if cap is not None else batch_cap(spec, nodes, memory_per_image)
    plan = checked_plan(spec, nodes, free_by_node, width, height, cap, run_plan)
    return replica_fit(spec, nodes, plan, memory_per_image)


def check_runnable(specs: list[ModelSpec], nodes: list[NodeCapacity], sizes: dict[str, tuple[int, int]],
                   run_plan: str | None, memory_per_image: int) -> None:
    """IMG_010 for the first local model of `specs` that can never run on `nodes` (`sizes`: each
    model's image size in this run)."""
    for spec in specs:
        if spec.is_local:
            width, height = sizes.get(spec.id, (spec.width, spec.height))
            fit_on(spec, nodes, width, height, run_plan, memory_per_image)


def _check_cpu(spec: ModelSpec, plan: MemoryPlan, nodes: list[NodeCapacity]) -> None:
    """On a cluster without GPUs: a plan that moves weights onto a card needs CUDA (the actor would
    refuse it after loading), and the whole pipeline sits in host RAM in float32."""
    if plan.name in NEEDS_CUDA:
        raise ImageGenError("IMG_010", f"model {spec.id!r}: memory plan {plan.name!r} needs a CUDA device, and this "
                                       f"cluster has no GPU ({describe(nodes)}); pick resident, fp8-storage or "
                                       "group-offload (--memory-plan), or run it on a GPU node.")
    sizes = sizes_for(spec)
    hosts = [n.host_gb for n in nodes if n.host_gb > 0]
    if sizes is None or not hosts:
        return
    need = sum(weights_gb(c, CPU_DTYPE_BYTES, plan.fp8) for c in sizes.components) + HOST_MARGIN_GB
    if need > max(hosts):
        raise ImageGenError("IMG_010", f"model {spec.id!r} needs about {need:.0f} GiB of host RAM on the CPU "
                                       f"(its weights in float32; this cluster has no GPU), and the largest node has "
                                       f"{max(hosts):.0f} GiB ({describe(nodes)}); run it on a GPU node "
                                       "(`--dry-run --card-memory GIB` shows its plan for a card), or pick a smaller "
                                       "or remote model.")
