"""`multi-image generate --dry-run`: what a run would do, without doing it.

The request goes through the run's own checks, in the run's order and by the same functions:
its folder, the models' weights or credentials, the budget (refused with IMG_029, or degraded),
the disk, and whether each local model has a memory plan some node can hold (IMG_010, CUDA-only
plans and host RAM on a cluster without GPUs included). The first that would stop the run is the
dry run's verdict, with the run's exit status. Besides, per model: the estimated time and cost,
and per kind of node the memory plan, the bundle it would ask Ray for and the nodes that could
hold it. Nothing is generated, nothing is written, no weights are needed. `--card-memory GIB` (and
`--host-memory GIB`) answer for a machine the cluster does not have: "will FLUX fit my 16 GiB
card?" before downloading 34 GB (that machine's weights are not judged). Sizes are GiB (2**30
bytes) throughout, as torch.cuda.mem_get_info reports them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cluster.errors import ImageGenError
from cluster.planning.feasibility import fit_on
from cluster.planning.limits import Limits
from cluster.planning.memory.replica_plan import sizes_for
from cluster.planning.placement import NodeCapacity, describe, uses_gpus
from cluster.planning.request import GenerationRequest
from models import availability
from models.registry import Registry

GIB = 2**30


@dataclass(frozen=True)
class Hypothetical:
    card_gb: float | None
    host_gb: float | None


def parse_memory(value: str | None, flag: str) -> float | None:
    if value is None or not str(value).strip():
        return None
    try:
        number = float(str(value).strip().lower().removesuffix("gib").removesuffix("gb"))
    except ValueError:
        number = -1.0
    if not 0 < number <= 4096:
        raise ImageGenError("IMG_028", f"{flag} {value!r} must be a size in GiB, e.g. 24.")
    return number


def this_machine() -> list[NodeCapacity]:
    """This machine as a node, as an embedded run would see it, without starting Ray: its cards
    (nvidia-smi) and the RAM free for new processes (Ray's `memory` of a node it starts)."""
    from cluster.engine.ray_runtime import detect_local_gpus

    gpus = detect_local_gpus()
    return [NodeCapacity("this-machine", "this machine", float(os.cpu_count() or 1), float(gpus.count),
                         gpus.memory_gb, float(available_ram()))]


def available_ram() -> int:
    """Bytes of RAM available for new processes (MemAvailable: free plus reclaimable cache)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def hypothetical_nodes(what: Hypothetical, machine: list[NodeCapacity]) -> list[NodeCapacity]:
    """One node with one card of `card_gb` (and `host_gb` of RAM, else this machine's; its CPUs
    are this machine's, which no plan depends on)."""
    host = what.host_gb * GIB if what.host_gb is not None else (machine[0].memory_bytes if machine else 0.0)
    card = what.card_gb or 0.0
    cpus = machine[0].cpus if machine else 1.0
    return [NodeCapacity("hypothetical", f"a {card:g} GiB card", cpus, 1.0 if card else 0.0, card, host)]


def node_kinds(nodes: list[NodeCapacity]) -> list[list[NodeCapacity]]:
    """Nodes grouped by what plans depend on (card size, host RAM), so each kind is planned once."""
    kinds: dict[tuple, list[NodeCapacity]] = {}
    for node in nodes:
        kinds.setdefault((node.gpus > 0, node.card_gb, round(node.host_gb)), []).append(node)
    return list(kinds.values())


def dry_run(request: GenerationRequest, registry: Registry, limits: Limits, machine: Hypothetical | None,
            history) -> dict:
    """The run's verdict on `request` (None: it would go ahead) and what it would do. `machine`: a
    hypothetical one instead of this cluster; `history`: the run history (cluster.observability.history.History)."""
    from cluster.observability.history import safely
    from cluster.planning.planner import make_plan

    plan = make_plan(request, registry, history=safely(history.score), require_available=False)
    nodes, where = _nodes(request, machine)
    verdict, degradation = None, None
    try:
        degradation = _run_checks(request, registry, limits, plan, nodes, history, judge_here=machine is None)
    except ImageGenError as exc:
        verdict = exc
    result = describe_plan(request, plan, registry, limits, nodes, where, safely(history.summary)() or {})
    result.update(degradation=degradation, ok=verdict is None,
                  verdict=None if verdict is None else {"code": verdict.code, "message": verdict.message,
                                                        "exit_status": verdict.exit_status})
    if machine is not None:
        result["cluster"] = where
    return result


def _nodes(request: GenerationRequest, machine: Hypothetical | None) -> tuple[list[NodeCapacity], str]:
    """The nodes the run would place on, and how to name them."""
    here = this_machine()
    if machine is not None:
        nodes = hypothetical_nodes(machine, here)
        card = f"one {machine.card_gb:g} GiB card" if machine.card_gb else "no GPU"
        return nodes, f"a hypothetical machine with {card} and {nodes[0].host_gb:.0f} GiB host RAM"
    from cluster.engine.ray_runtime import RayRuntime, find_running_cluster

    if request.address or find_running_cluster()[0] is not None:
        from cluster.engine.nodes import cluster_nodes

        with RayRuntime(request.address, request.debug) as runtime:
            return cluster_nodes(), f"the Ray cluster at {runtime.describe()['address']}"
    return here, "this machine"  # no cluster: this machine, as an embedded run would see it


def _run_checks(request: GenerationRequest, registry: Registry, limits: Limits, plan, nodes: list[NodeCapacity],
                history, judge_here: bool) -> dict | None:
    """The run's own checks, in its order and by its stages' functions (cluster.pipeline.run); raises
    the first that fails. Returns the budget's degradation, which changes `plan` as it would the run's."""
    from cluster.pipeline.stages.budget import budget_plan
    from cluster.pipeline.stages.disk import check_room
    from cluster.pipeline.stages.memory import check_fits
    from cluster.planning.preflight import check_folder_owned

    check_folder_owned(request.folder_name)
    if judge_here:  # the run refuses a model whose weights or credentials are not here
        for spec in plan.specs.values():
            availability.check(spec).raise_if_missing()
    _, degradation = budget_plan(request, registry, plan, history, None)
    if judge_here:
        check_room(request, plan, limits)
    check_fits(request, plan, nodes, limits)
    return degradation


def describe_plan(request: GenerationRequest, plan, registry: Registry, limits: Limits, nodes: list[NodeCapacity],
                  where: str, history: dict) -> dict:
    """Per model: weights present, the estimated time and cost (from `history`, the run history's
    summary, else list prices and defaults), and per node kind the memory plan, bundle and fitting nodes."""
    from cluster.planning.costs.budget import estimate
    from cluster.planning.costs.config import load_costs

    counts: dict[str, int] = {}
    for task in plan.tasks:
        counts[task.model] = counts.get(task.model, 0) + 1
    # priced for the nodes judged: this machine without a GPU at the CPU rate, as the run's budget stage
    estimates = estimate(counts, {s.id: s for s in registry}, history, load_costs(), not uses_gpus(nodes))
    models = []
    for model_id, images in counts.items():
        spec = registry.get(model_id)
        check = availability.check(spec)
        present = "weights present" if spec.is_local else "credentials set"
        row: dict = {"model": model_id, "images": images, "local": spec.is_local, "available": check.ok,
                     "availability": check.reason or present, "estimate": estimates[model_id].as_dict()}
        if spec.is_local:
            sizes = sizes_for(spec)
            row["sizes_from"] = sizes.source if sizes else "declared gpu_memory_gb"
            task = next(t for t in plan.tasks if t.model == model_id)
            row["kinds"] = [_plan_on(spec, kind, task.width, task.height, request, limits) for kind in node_kinds(nodes)]
            row["fits"] = any(k["plan"] is not None and k["nodes"] for k in row["kinds"])
        else:
            row["fits"] = True
        models.append(row)
    total = sum(e.usd for e in estimates.values())
    return {"event": "dry_run", "where": where, "cluster": describe_nodes(nodes), "images": len(plan.tasks),
            "models": models, "estimated_usd": round(total, 6), "budget_usd": request.budget_usd,
            "budget_policy": request.budget_policy,
            "within_budget": request.budget_usd is None or total <= request.budget_usd}


def describe_nodes(nodes: list[NodeCapacity]) -> str:
    """The nodes with what plans depend on: cards and host RAM."""
    return "; ".join(f"{describe([n])}, {n.host_gb:.0f} GiB host RAM free" for n in nodes) or describe(nodes)


def _plan_on(spec, kind: list[NodeCapacity], width: int, height: int, request: GenerationRequest,
             limits: Limits) -> dict:
    first = kind[0]
    label = f"{first.card_gb:g} GiB card, {first.host_gb:.0f} GiB host RAM" if first.card_gb else \
        f"no GPU, {first.host_gb:.0f} GiB host RAM"
    out: dict = {"node_kind": label, "nodes": [], "plan": None}
    try:
        fit = fit_on(spec, kind, width, height, request.memory_plan, limits.perf.memory_limit_per_image)
        out.update(plan=fit.plan.as_dict(), bundle=dict(fit.bundle),
                   nodes=[n.address or n.node_id for n in fit.nodes])
    except ImageGenError as exc:
        out.update(code=exc.code, message=exc.message)
    return out


def render(result: dict) -> str:
    where, cluster = result["where"], result["cluster"]
    on = cluster if cluster.startswith(where) else f"{where}: {cluster}"
    lines = [f"dry run on {on}; {result['images']} image(s) planned"]
    for m in result["models"]:
        est = m["estimate"]
        seconds = f"{est['seconds_per_image']:g} s/image, " if est["seconds_per_image"] else ""
        lines.append(f"{m['model']}: {m['images']} image(s); {m['availability']}; estimated {seconds}"
                     f"{usd(est['usd'])} ({est['basis']})")
        for kind in m.get("kinds", []):
            plan = kind["plan"]
            if plan is None:
                lines.append(f"  on {kind['node_kind']}: does not fit: {kind.get('code')} {kind.get('message')}")
            else:
                lines.append(f"  on {kind['node_kind']}: {plan['label']} ({plan['footprint_gb']:g} GiB on the card, "
                             f"{plan['host_gb']:g} GiB host, batch {plan['batch']}): {plan['reason']}; "
                             f"places on {', '.join(kind['nodes']) or 'no node'}")
    budget = f" (budget {usd(result['budget_usd'])}: {'within' if result['within_budget'] else 'OVER'})" \
        if result["budget_usd"] is not None else ""
    lines.append(f"estimated cost {usd(result['estimated_usd'])}{budget}")
    degradation = result.get("degradation")
    if degradation:
        lines.append(f"budget ({result['budget_policy']}): {budget_change(degradation)}")
    verdict = result["verdict"]
    if verdict is None:
        lines.append("the run would go ahead: everything fits")
    else:
        lines.append(f"the run would stop here with {verdict['code']} (exit {verdict['exit_status']})")
    return "\n".join(lines)


def budget_change(degradation: dict) -> str:
    """What a degraded budget did to the plan, in one phrase."""
    parts = []
    if degradation.get("images_moved"):
        parts.append(f"{degradation['images_moved']} image(s) moved to {degradation['images_moved_to']}")
    if degradation.get("images_dropped"):
        parts.append(f"{degradation['images_dropped']} image(s) dropped")
    return (", ".join(parts) or "plan cut") + f" to stay within {usd(degradation['budget_usd'])}"


def usd(amount: float | None) -> str:
    """Money as people read it: cents for sums of a cent and more, else enough digits to be seen."""
    from cluster.planning.costs.money import format_usd

    return format_usd(amount)
