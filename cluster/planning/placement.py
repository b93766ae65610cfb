"""Where model replicas go: placement-group bundles built from model specs.

Every GPU node advertises, besides Ray's `GPU`, the custom resource `gpu_memory_gb`
(the sum over its cards; `multi-image` sets it for the nodes it starts, `ray start
--resources` for others). A replica's bundle asks for its GPUs and its GPU memory, so
Ray never packs more weights onto a node than its cards hold.

Ray accounts fractional GPUs per card. A model that shares a card asks for the share of
the *smallest* card in the cluster its memory takes (never less than its spec's
`gpus`), so two models that would not fit one card together never land on it.

Decisions about feasibility are taken here, against the cluster's totals, before any
placement group exists: a model that fits nowhere fails at once with IMG_010 instead of
leaving Ray waiting forever for resources. Pure: the nodes come from the engine
(cluster.engine.nodes reads them from Ray).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.errors import ImageGenError
from models.registry import ModelSpec

GPU_MEMORY_RESOURCE = "gpu_memory_gb"


@dataclass(frozen=True)
class NodeCapacity:
    node_id: str
    address: str
    cpus: float
    gpus: float
    gpu_memory_gb: float
    memory_bytes: float
    object_store_bytes: float = 0.0

    @property
    def host_gb(self) -> float:
        """Host RAM Ray found free when the node started (its task memory plus its object store)."""
        return (self.memory_bytes + self.object_store_bytes) / 2**30

    @property
    def card_gb(self) -> float | None:
        """Memory of one card (cards of a node are assumed alike), None when not advertised."""
        if self.gpus <= 0 or self.gpu_memory_gb <= 0:
            return None
        return self.gpu_memory_gb / self.gpus


def describe(nodes: list[NodeCapacity]) -> str:
    if not nodes:
        return "no live nodes"
    parts = []
    for n in nodes:
        gpu = f"{n.gpus:g} GPU" + (f" x {n.card_gb:g} GiB" if n.card_gb else "") if n.gpus else "no GPU"
        parts.append(f"{n.address or n.node_id[:8]}: {n.cpus:g} CPU, {gpu}")
    return "; ".join(parts)


def uses_gpus(nodes: list[NodeCapacity]) -> bool:
    return any(n.gpus > 0 for n in nodes)


def smallest_card_gb(nodes: list[NodeCapacity]) -> float | None:
    cards = [n.card_gb for n in nodes if n.card_gb]
    return min(cards) if cards else None


def reserve_gb(spec: ModelSpec, batch: int = 1) -> float:
    """GPU memory a replica of `spec` uses at `batch` images per call: weights plus activations."""
    return spec.gpu_memory_gb + spec.gpu_memory_per_image_gb * max(1, batch)


def gpu_share(declared_gpus: float, memory_gb: float, card_gb: float | None) -> float:
    """The `GPU` a replica asks Ray for.

    Up to one card, memory decides, never below a fraction the model declares: a model declared
    `gpus: 1` that asked Ray for a whole GPU could never share a card with the CLIP scorer, even
    when both fit in its memory, so `gpus: 1` means "one card at most"; `gpus: 0.5` means at least
    half a card's compute, whatever its memory. Ray counts a card's fractions, `gpu_memory_gb`
    counts its memory; rounding down keeps two replicas whose memory fits one card from missing it
    by a rounding error. Above one card, whole cards.
    """
    if declared_gpus <= 0:
        return 0.0
    if declared_gpus > 1:
        return float(math.ceil(declared_gpus))
    if not card_gb or memory_gb <= 0:
        return round(declared_gpus, 4)
    share = math.floor(min(1.0, memory_gb / card_gb) * 10**4) / 10**4
    floor = declared_gpus if declared_gpus < 1 else 0.0
    return max(share, round(floor, 4), 1e-4)


def host_bytes(spec: ModelSpec, plan, batch: int, memory_per_image: int) -> int:
    """Host memory one replica reserves: what its memory plan holds in host RAM at its peak
    (offloaded weights, pinned copies, loading), plus memory_limit_per_image for each image of
    its batch (decoded images, PNG buffers)."""
    if not spec.is_local:
        return 0
    return int(plan.host_gb * 2**30) + memory_per_image * batch


def replica_bundle(spec: ModelSpec, nodes: list[NodeCapacity], memory_bytes: int = 0, batch: int = 1,
                   gpu_gb: float | None = None) -> dict[str, float]:
    """The resources one replica of `spec` holds at `batch` images per call; `gpu_gb`: its memory
    plan's footprint (default: the spec's declared weights and activations). Remote-API models
    need no accelerator."""
    bundle: dict[str, float] = {"CPU": spec.cpus}
    if memory_bytes:
        bundle["memory"] = float(memory_bytes)
    if not spec.is_local or not uses_gpus(nodes) or spec.gpus <= 0:
        return bundle
    card = smallest_card_gb(nodes)
    if gpu_gb is not None:
        need = gpu_gb
    else:
        need = reserve_gb(spec, batch) if spec.gpu_memory_gb > 0 else 0.0
    bundle["GPU"] = gpu_share(spec.gpus, need, card)
    if card is not None and need > 0:
        bundle[GPU_MEMORY_RESOURCE] = round(need, 4)
    return bundle


def free_card_gb(node: NodeCapacity, free: dict[str, float] | None) -> float | None:
    """At most how much GPU memory the emptiest card of `node` has free now (`free`: the node's
    available resources; Ray counts gpu_memory_gb per node, so a card holds at most the node's)."""
    card = node.card_gb
    if card is None:
        return None
    if free is None:
        return card
    return max(0.0, min(card, free.get(GPU_MEMORY_RESOURCE, 0.0)))


def replica_batch(spec: ModelSpec, nodes: list[NodeCapacity], free_by_node: dict[str, dict[str, float]] | None = None
                  ) -> int:
    """Images per call for a local model: the spec's cap, lowered to what a card has spare *now*
    beside the weights (other runs' and resident replicas hold the rest). When no card has room
    for even one image now, the size a whole card holds: the replica will wait for one to free."""
    cards = [(n, n.card_gb) for n in nodes if n.card_gb]
    if not cards or spec.gpu_memory_per_image_gb <= 0:
        return spec.max_batch_size
    smallest = min(card for _, card in cards)
    if free_by_node is not None:
        room = [free_card_gb(n, free_by_node.get(n.node_id, {})) or 0.0 for n, _ in cards]
        usable = [r for r in room if r >= reserve_gb(spec, 1)]
        if usable:
            return spec.batch_size_for(min(max(usable), smallest))
    return spec.batch_size_for(smallest)


def node_fits(bundle: dict[str, float], node: NodeCapacity, spec: ModelSpec) -> bool:
    if bundle.get("CPU", 0) > node.cpus or bundle.get("GPU", 0) > node.gpus:
        return False
    if bundle.get("memory", 0) > node.memory_bytes:
        return False
    if GPU_MEMORY_RESOURCE in bundle:
        if bundle[GPU_MEMORY_RESOURCE] > node.gpu_memory_gb:
            return False
        # a replica on several cards splits its components over them: each card holds its share
        per_card = bundle[GPU_MEMORY_RESOURCE] / max(1.0, math.ceil(bundle.get("GPU", 1)))
        if node.card_gb is not None and per_card > node.card_gb:
            return False
    return True


def check_placeable(spec: ModelSpec, bundle: dict[str, float], nodes: list[NodeCapacity]) -> list[NodeCapacity]:
    """Nodes that could ever hold one replica; IMG_010 naming need and supply when none can."""
    fitting = [n for n in nodes if node_fits(bundle, n, spec)]
    if not fitting:
        need = fmt_bundle(bundle)
        raise ImageGenError(
            "IMG_010",
            f"model {spec.id!r} needs {need} on one node, and no node has that (cluster: {describe(nodes)}). "
            "Add a larger GPU node (`ray start --address=... --num-gpus=N "
            "--resources='{\"gpu_memory_gb\": TOTAL}'`), or pick a smaller model; `ray status` shows the resources.",
        )
    return fitting


def fmt_bundle(bundle: dict[str, float]) -> str:
    parts = [f"{k}={v:g}" for k, v in bundle.items() if k != "memory"]
    if bundle.get("memory"):
        parts.append(f"host memory={bundle['memory'] / 2**30:.2f} GiB")
    return ", ".join(parts)


def replica_count(
    spec: ModelSpec, images: int, batch_size: int, max_parallel: int, bundle: dict[str, float],
    nodes: list[NodeCapacity], free: dict[str, float] | None = None,
) -> int:
    return replica_capacity(spec, images, batch_size, max_parallel, bundle, nodes, free)[0]


# a bundle's resources as people call them, for the message that names what ran out
_RESOURCE_NAMES = {"GPU": "GPUs", GPU_MEMORY_RESOURCE: "GPU memory", "CPU": "CPUs", "memory": "host memory"}


def replica_capacity(
    spec: ModelSpec, images: int, batch_size: int, max_parallel: int, bundle: dict[str, float],
    nodes: list[NodeCapacity], free: dict[str, float] | None = None,
) -> tuple[int, str]:
    """How many replicas of a model, and what held the number down ("" when nothing did): enough
    for its calls, within --max-parallel and the resources the nodes have and have free now
    (`free`: the cluster's available resources; others' replicas hold the rest).

    Remote models get one actor (it takes `concurrent_limit` calls at once). CPU-only clusters get
    one replica per model: more would only fight over the same cores.
    """
    calls = math.ceil(images / max(1, batch_size))
    if not spec.is_local or calls <= 1:
        return 1, ""
    if not uses_gpus(nodes):
        return 1, ""
    wanted = min(calls, max_parallel, spec.rate_limit.concurrent_limit or calls)
    held: dict[str, int] = {}  # resource -> replicas it alone allows
    supply = {"GPU": lambda n: n.gpus, GPU_MEMORY_RESOURCE: lambda n: n.gpu_memory_gb, "CPU": lambda n: n.cpus,
              "memory": lambda n: n.memory_bytes}
    fitting = [n for n in nodes if node_fits(bundle, n, spec)]
    for key, of in supply.items():
        if bundle.get(key):
            held[key] = sum(int(of(n) / bundle[key] + 1e-9) for n in fitting)
    if free is not None:
        for key in held:
            if key in free:
                held[key] = min(held[key], int(free[key] / bundle[key] + 1e-9))
    per_node = sum(int(min([of(n) / bundle[k] + 1e-9 for k, of in supply.items() if bundle.get(k)] or [math.inf]))
                   for n in fitting)
    capacity = min([per_node, *held.values()])
    count = max(1, min(wanted, capacity))
    if count >= wanted:
        return count, ""
    scarce = min(held, key=lambda k: held[k]) if held and min(held.values()) <= per_node else None
    what = _RESOURCE_NAMES.get(scarce, scarce) if scarce else "room on any one node"
    now = " free now" if free is not None and scarce in free else ""
    return count, (f"{count} of the {wanted} replicas wanted: {what}{now} ran out first (each replica holds "
                   f"{fmt_bundle(bundle)})")


def missing_resources(bundle: dict[str, float], free_by_node: dict[str, dict[str, float]]) -> str:
    """Which of `bundle`'s resources the nodes lack free now (`free_by_node`: each node's free
    resources), as people call them: those every node lacks, else those some node lacks."""
    lacking = [{k for k, v in bundle.items() if free.get(k, 0.0) + 1e-9 < v} for free in free_by_node.values()]
    if not lacking or not all(lacking):
        return "nothing (the room came free too late)"
    common = set.intersection(*lacking) or set.union(*lacking)
    return " and ".join(sorted(_RESOURCE_NAMES.get(k, k) for k in common))
