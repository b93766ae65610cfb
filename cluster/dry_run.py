"""`multi-image generate --dry-run`: what a run would do, without doing it.

The request is validated and planned as for a real run (models, images, seeds); then, per model,
the memory plan it would use on each kind of node, the bundle it would ask Ray for, the nodes that
could hold it and whether its weights are here. Nothing is generated, nothing is written, no
weights are needed. `--card-memory GIB` (and `--host-memory GIB`) answer for a card the cluster does
not have: "will FLUX fit my 16 GiB card?" before downloading 34 GB. Sizes are GiB (2**30 bytes)
throughout, as torch.cuda.mem_get_info reports them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cluster.errors import ImageGenError
from cluster.limits import Limits
from cluster.memory.replica_plan import plan_replica, sizes_for
from cluster.placement import NodeCapacity, check_placeable, describe, host_bytes, replica_bundle
from cluster.request import GenerationRequest
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
    """This machine as a node, without starting Ray: its cards (nvidia-smi) and its free RAM."""
    from cluster.ray_runtime import detect_local_gpus

    gpus = detect_local_gpus()
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = 0
    return [NodeCapacity("this-machine", "this machine", float(os.cpu_count() or 1), float(gpus.count),
                         gpus.memory_gb, float(free))]


def hypothetical_nodes(what: Hypothetical, machine: list[NodeCapacity]) -> list[NodeCapacity]:
    """One node with one card of `card_gb` (and `host_gb` of RAM, else this machine's)."""
    host = what.host_gb * GIB if what.host_gb is not None else (machine[0].memory_bytes if machine else 0.0)
    card = what.card_gb or 0.0
    return [NodeCapacity("hypothetical", f"a {card:g} GiB card", 8.0, 1.0 if card else 0.0, card, host)]


def node_kinds(nodes: list[NodeCapacity]) -> list[list[NodeCapacity]]:
    """Nodes grouped by what plans depend on (card size, host RAM), so each kind is planned once."""
    kinds: dict[tuple, list[NodeCapacity]] = {}
    for node in nodes:
        kinds.setdefault((node.gpus > 0, node.card_gb, round(node.host_gb)), []).append(node)
    return list(kinds.values())


def dry_run(request: GenerationRequest, plan_models: dict[str, int], registry: Registry, limits: Limits,
            nodes: list[NodeCapacity], where: str, history: dict | None = None) -> dict:
    """Per model: weights present, the estimated time and cost (from `history`, the run history's
    summary, else list prices and defaults), and per node kind the memory plan, bundle and fitting nodes."""
    from cluster.costs.budget import estimate
    from cluster.costs.config import load_costs

    estimates = estimate(plan_models, {s.id: s for s in registry}, history or {}, load_costs())
    models = []
    for model_id, images in plan_models.items():
        spec = registry.get(model_id)
        check = availability.check(spec)
        present = "weights present" if spec.is_local else "credentials set"
        row: dict = {"model": model_id, "images": images, "local": spec.is_local, "available": check.ok,
                     "availability": check.reason or present}
        row["estimate"] = estimates[model_id].as_dict()
        if spec.is_local:
            sizes = sizes_for(spec)
            row["sizes_from"] = sizes.source if sizes else "declared gpu_memory_gb"
            row["kinds"] = [_plan_on(spec, kind, request, limits, sizes) for kind in node_kinds(nodes)]
            row["fits"] = any(k["plan"] is not None and k["nodes"] for k in row["kinds"])
        else:
            row["fits"] = True
        models.append(row)
    total = sum(e.usd for e in estimates.values())
    budget_ok = request.budget_usd is None or total <= request.budget_usd
    return {"event": "dry_run", "where": where, "cluster": describe(nodes), "images": sum(plan_models.values()),
            "models": models, "estimated_usd": round(total, 6), "budget_usd": request.budget_usd,
            "within_budget": budget_ok, "ok": all(m["fits"] for m in models)}


def _plan_on(spec, kind: list[NodeCapacity], request: GenerationRequest, limits: Limits, sizes) -> dict:
    width, height = request.width or spec.width, request.height or spec.height
    cap = spec.max_batch_size
    per_image = limits.perf.memory_limit_per_image
    biggest = max((n.memory_bytes for n in kind), default=0)
    if per_image > 0 and biggest > 0:
        cap = max(1, min(cap, int(biggest / 2 // per_image)))
    first = kind[0]
    label = f"{first.card_gb:g} GiB card, {first.host_gb:.0f} GiB host RAM" if first.card_gb else \
        f"no GPU, {first.host_gb:.0f} GiB host RAM"
    out: dict = {"node_kind": label, "nodes": [], "plan": None}
    try:
        plan = plan_replica(spec, kind, None, width, height, cap, request.memory_plan, sizes=sizes)
        bundle = replica_bundle(spec, kind, host_bytes(spec, plan, plan.batch, limits), plan.batch,
                                gpu_gb=plan.gpu_gb or None)
        out.update(plan=plan.as_dict(), bundle={k: v for k, v in bundle.items()})
        out["nodes"] = [n.address or n.node_id for n in check_placeable(spec, bundle, kind)]
    except ImageGenError as exc:
        out.update(code=exc.code, message=exc.message)
    return out


def render(result: dict) -> str:
    lines = [f"dry run on {result['where']}: {result['cluster']}; {result['images']} image(s) planned"]
    for m in result["models"]:
        est = m["estimate"]
        seconds = f"{est['seconds_per_image']:g} s/image, " if est["seconds_per_image"] else ""
        lines.append(f"{m['model']}: {m['images']} image(s); {m['availability']}; estimated {seconds}"
                     f"${est['usd']:.6f} ({est['basis']})")
        for kind in m.get("kinds", []):
            plan = kind["plan"]
            if plan is None:
                lines.append(f"  on {kind['node_kind']}: does not fit: {kind.get('code')} {kind.get('message')}")
            else:
                lines.append(f"  on {kind['node_kind']}: {plan['label']} ({plan['footprint_gb']:g} GiB on the card, "
                             f"{plan['host_gb']:g} GiB host, batch {plan['batch']}): {plan['reason']}; "
                             f"places on {', '.join(kind['nodes']) or 'no node'}")
    budget = f" (budget ${result['budget_usd']:g}: {'within' if result['within_budget'] else 'OVER'})" \
        if result["budget_usd"] is not None else ""
    lines.append(f"estimated cost ${result['estimated_usd']:.6f}{budget}")
    lines.append("everything fits" if result["ok"] else "something does not fit (see above)")
    return "\n".join(lines)
