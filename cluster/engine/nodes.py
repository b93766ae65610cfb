"""What the Ray cluster has now: its live nodes, as the planner's `NodeCapacity`, and each
node's free resources. The one place the driver reads them from Ray."""

from __future__ import annotations

from cluster.planning.placement import GPU_MEMORY_RESOURCE, NodeCapacity


def available_by_node() -> dict[str, dict[str, float]] | None:
    """Each live node's free resources now; None when this Ray cannot say (the caller then plans
    against totals)."""
    try:
        from ray._private.state import available_resources_per_node  # no public per-node API yet

        return {node_id: dict(res) for node_id, res in available_resources_per_node().items()}
    except Exception:  # noqa: BLE001 - an internal API that may move between Ray releases
        return None


def cluster_nodes() -> list[NodeCapacity]:
    import ray

    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        nodes.append(NodeCapacity(
            node_id=node["NodeID"],
            address=node.get("NodeManagerAddress", ""),
            cpus=float(res.get("CPU", 0)),
            gpus=float(res.get("GPU", 0)),
            gpu_memory_gb=float(res.get(GPU_MEMORY_RESOURCE, 0)),
            memory_bytes=float(res.get("memory", 0)),
            object_store_bytes=float(res.get("object_store_memory", 0)),
        ))
    return nodes
