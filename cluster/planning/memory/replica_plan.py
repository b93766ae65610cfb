"""The memory plan of a model's replicas on the cluster the driver sees: planned against the
smallest card (the share a replica asks Ray for is counted against it too, see cluster.planning.placement)
and the least host RAM among the GPU nodes, batched into the room a card has free now.

A model without sizes (no architecture, weights not here or not in safetensors) keeps its
declared `gpu_memory_gb` as the plan "declared"; a cluster without GPUs plans nothing ("cpu").
"""

from __future__ import annotations

from pathlib import Path

from cluster.errors import ImageGenError
from cluster.planning.memory.architectures import Activations
from cluster.planning.memory.combinations import refuse_explicit
from cluster.planning.memory.planner import MemoryPlan, Need, PlanChoice, batch_for, choose, fitting
from cluster.planning.memory.sizes import ModelSizes, model_sizes
from cluster.planning.placement import NodeCapacity, free_card_gb, reserve_gb, smallest_card_gb, uses_gpus
from models.registry import ModelSpec


def weights_folder(spec: ModelSpec) -> Path | None:
    """The folder the model's weights load from on this machine, when they are here."""
    if spec.backend != "diffusers" or not spec.source:
        return None
    kind, value = spec.source_kind()
    if kind == "local":
        return Path(value) if (Path(value) / "model_index.json").is_file() else None
    if kind == "hub":
        from models.availability import hub_snapshot

        return hub_snapshot(value, spec.revision)
    return None  # builtin tiny models: sized by their declaration


def sizes_for(spec: ModelSpec) -> ModelSizes | None:
    # weights sized without an architecture file still need working-memory figures: the declared ones
    declared = Activations(reference_pixels=spec.width * spec.height, denoiser_gb_per_image=spec.gpu_memory_per_image_gb,
                           vae_decode_gb_per_image=0.0)
    return model_sizes(spec.architecture, weights_folder(spec), declared)


def forced_plan(spec: ModelSpec, run_plan: str | None) -> str | None:
    """The plan a run or the model's entry insists on; None: the first that fits."""
    chosen = run_plan or spec.memory_plan
    return None if chosen in (None, "auto") else chosen


def gpu_need(spec: ModelSpec, nodes: list[NodeCapacity], width: int, height: int, batch: int = 1) -> Need | None:
    card = smallest_card_gb(nodes)
    if card is None:
        return None
    # the host RAM a replica's bundle can reserve there: Ray's `memory` resource of the node
    hosts = [n.memory_bytes / 2**30 for n in nodes if n.card_gb and n.memory_bytes > 0]
    return Need(card_gb=card, host_gb=min(hosts) if hosts else None, batch=batch, width=width, height=height,
                allow_fp8=spec.allow_fp8)


def plan_replica(spec: ModelSpec, nodes: list[NodeCapacity], free_by_node: dict[str, dict[str, float]] | None,
                 width: int, height: int, batch_cap: int, run_plan: str | None = None,
                 sizes: ModelSizes | None = None) -> MemoryPlan:
    """The plan every replica of `spec` uses in this run, or IMG_010 naming every plan's footprint;
    IMG_018 when a speed option set explicitly cannot run under it (before anything loads)."""
    plan = _plan_replica(spec, nodes, free_by_node, width, height, batch_cap, run_plan, sizes)
    if spec.is_local:
        refuse_explicit(spec.id, spec.speedups, plan, cuda=uses_gpus(nodes))
    return plan


def _plan_replica(spec: ModelSpec, nodes: list[NodeCapacity], free_by_node: dict[str, dict[str, float]] | None,
                  width: int, height: int, batch_cap: int, run_plan: str | None, sizes: ModelSizes | None
                  ) -> MemoryPlan:
    forced = forced_plan(spec, run_plan)
    if not spec.is_local:
        return MemoryPlan("remote")
    if not uses_gpus(nodes):  # the CPU holds whatever it is given; only the forced plan's kind matters
        name = forced or "cpu"
        return MemoryPlan(name, fp8=name == "fp8-storage", batch=batch_cap, reason="no GPU in the cluster")
    sizes = sizes if sizes is not None else sizes_for(spec)
    if sizes is None:
        from cluster.planning.placement import replica_batch

        batch = min(batch_cap, replica_batch(spec, nodes, free_by_node))
        return MemoryPlan(forced or "declared", fp8=forced == "fp8-storage", gpu_gb=round(reserve_gb(spec, batch), 4),
                          batch=batch, reason="the model's declared gpu_memory_gb (no sizes known for its components)")
    need = gpu_need(spec, nodes, width, height)
    if need is None:  # GPUs of unknown memory: nothing to plan against
        return MemoryPlan(forced or "declared", fp8=forced == "fp8-storage", gpu_gb=round(reserve_gb(spec, 1), 4),
                          batch=1, reason="the cluster's cards do not advertise gpu_memory_gb")
    choice = choose(sizes, need, forced)
    if choice.plan is None:
        raise ImageGenError("IMG_010", unplaceable_message(spec, need, choice, forced, sizes))
    room = max((free_card_gb(n, (free_by_node or {}).get(n.node_id)) or 0.0 for n in nodes if n.card_gb),
               default=need.card_gb) if free_by_node is not None else need.card_gb
    return batch_for(sizes, need, choice.plan, room, batch_cap)


def unplaceable_message(spec: ModelSpec, need: Need, choice: PlanChoice, forced: str | None,
                        sizes: ModelSizes) -> str:
    host = "unknown host RAM" if need.host_gb is None else f"{need.host_gb:.0f} GiB host RAM"
    where = f"a {need.card_gb:g} GiB card with {host} at {need.width}x{need.height}"
    if forced:
        others = "; ".join(f"{p.label} ({p.gpu_gb:g} GiB)" for p in fitting(sizes, need)) or "none"
        return (f"model {spec.id!r}: memory plan {forced!r} does not fit {where} ({choice.table()}). "
                f"Plans that fit: {others}; name one with --memory-plan, or let it choose (--memory-plan auto).")
    hint = "add a node with a larger card or more host RAM, or pick a remote model"
    if not need.allow_fp8:
        hint += "; fp8 plans are off for it (allow_fp8: false)"
    return (f"model {spec.id!r}: no memory plan fits {where} ({choice.table()}); {hint}. "
            "`multi-image generate --dry-run --card-memory GIB` shows every plan for any card.")
