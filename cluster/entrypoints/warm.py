"""`multi-image cluster up | status | down`: a Ray cluster that keeps models resident.

`up` starts a Ray head on this machine (or joins `--address`, or the cluster `ray start` left
running here; never a run's or a server's private embedded instance) and brings up detached,
named model and scorer replicas through the cluster's ResidentRegistry; `generate
--address auto` and `batch` then find them warm. Ray's token authentication is on: `up`
generates the token (~/.ray/auth_token) before `ray start`, and drivers on this machine read it.
`up` also opens the cluster's front door (cluster.entrypoints.frontdoor) when the cluster runs on
this machine, so `generate` hands its run over instead of joining as a Ray driver; `down` closes it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from cluster import env
from cluster.errors import ImageGenError
from cluster.observability.events import Events
from cluster.planning.limits import Limits
from cluster.engine.nodes import cluster_nodes
from cluster.planning.placement import GPU_MEMORY_RESOURCE
from cluster.engine.ray_runtime import (
    MIN_EMBEDDED_CPUS,
    NAMESPACE,
    detect_local_gpus,
    find_running_cluster,
    join,
    require_token_auth,
)
from models import availability
from models.registry import Registry
from models.scorers import NO_SCORER, ScoringConfig


def ray_cli() -> str | None:
    """The `ray` command of this environment (beside the interpreter), else the one on PATH."""
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() else shutil.which("ray")


def start_head() -> None:
    """`ray start --head` with the resources a node of this project advertises."""
    import os

    ray_command = ray_cli()
    if ray_command is None:
        raise ImageGenError("IMG_019", "the `ray` command is not on PATH; install the project into this environment.")
    gpus = detect_local_gpus()
    if gpus.note:
        print(f"[multi-image] {gpus.note}", file=sys.stderr)
    require_token_auth()
    # `ray start` in token mode wants the token to exist; Ray's own command makes it when missing
    # (~/.ray/auth_token, where every driver on this machine reads it). It prints the token: kept out of sight.
    made = subprocess.run([ray_command, "get-auth-token", "--generate"], capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        raise ImageGenError("IMG_019", f"`ray get-auth-token --generate` failed: {' '.join(made.stderr.split())[-300:]}")
    command = [ray_command, "start", "--head", f"--num-cpus={max(os.cpu_count() or 1, MIN_EMBEDDED_CPUS)}",
               f"--num-gpus={gpus.count}", "--include-dashboard=false", "--disable-usage-stats"]
    if gpus.count:
        command.append("--resources=" + json.dumps({GPU_MEMORY_RESOURCE: gpus.memory_gb}))
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise ImageGenError("IMG_019", f"`ray start --head` failed: {' '.join(done.stderr.split())[-400:]}")


def connect(address: str | None, start: bool = False) -> str:
    """Join `address`, or the cluster `ray start` left running on this machine (never a run's or a
    server's private embedded instance); with `start`, start one here when none runs."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    target = address or env.ray_address() or "auto"
    if start and target == "auto" and find_running_cluster()[0] is None:
        start_head()
    try:
        join(target)
    except ImageGenError:
        raise
    except (ConnectionError, RuntimeError, ValueError) as exc:  # auth errors included
        raise ImageGenError("IMG_019", f"could not join the Ray cluster at {target!r}: "
                                       f"{' '.join(str(exc).split())[:200]}. Check `ray status` there and that this "
                                       "machine has the cluster's auth token (~/.ray/auth_token).") from None
    return ray.get_runtime_context().gcs_address


@dataclass
class UpReport:
    models: dict[str, dict] = field(default_factory=dict)
    scorer: dict | None = None
    errors: dict[str, str] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)  # model -> why fewer replicas than asked


def bring_up(registry: Registry, model_ids: list[str], scoring: ScoringConfig, scorer_id: str | None,
             limits: Limits, replicas: int = 1, keep_alive_s: float | None = None,
             events: Events | None = None) -> UpReport:
    """Resident replicas of each model (loaded before this returns) and of the scorer."""
    import ray

    from cluster.engine.replicas import ReplicaPool
    from cluster.engine.resident import REGISTRY_TIMEOUT, registry_actor
    from cluster.engine.scoring import ActorScorer, make_scorer

    events = events or Events()
    report = UpReport()
    keep_alive_s = keep_alive_s or limits.scheduler.keep_alive_seconds
    # the cluster's settings live in its registry, so replicas reloaded later get them too
    ray.get(registry_actor().configure.remote(keep_alive_s, {model_id: replicas for model_id in model_ids}),
            timeout=REGISTRY_TIMEOUT)
    pool = ReplicaPool(limits, max_parallel=max(1, replicas), events=events, resident=True,
                       keep_alive_s=keep_alive_s)
    for model_id in model_ids:
        spec = registry.get(model_id)
        check = availability.check(spec)
        if not check.ok:
            report.errors[model_id] = f"{check.code}: {check.reason}"
            continue
        # enough images for `replicas` calls, so the pool asks for that many replicas
        group = pool.ensure(spec, images=replicas * pool.batch_size(spec))
        if group.error is not None:
            report.errors[model_id] = f"{group.error.code}: {group.error.message}"
    deadline = time.monotonic() + limits.scheduler.model_load_timeout
    while pool.loading_refs() and time.monotonic() < deadline:
        ready, _ = ray.wait(list(pool.loading_refs()), num_returns=1, timeout=5)
        for ref in ready:
            pool.on_loaded(pool.loading_refs()[ref])
    for event in events.of("replicas_limited"):
        report.short[event["model"]] = event["reason"]
    for model_id, group in pool.groups.items():
        loaded = [r.info for r in group.replicas if r.loaded and r.info]
        if loaded and len(loaded) < replicas and model_id not in report.short:
            report.short[model_id] = f"{len(loaded)} of the {replicas} replicas asked for loaded"
        if loaded:
            report.models[model_id] = {"replicas": len(loaded), "load_seconds": max(i.load_seconds for i in loaded),
                                       "device": loaded[0].device}
        elif group.error is not None:
            report.errors[model_id] = f"{group.error.code}: {group.error.message}"
    if scorer_id != NO_SCORER:
        scorer = make_scorer(scorer_id, scoring, pool.nodes, events, resident=True, limits=limits)
        if isinstance(scorer, ActorScorer):
            scorer.describe()  # waits for the load
            report.scorer = scorer.describe()
        else:
            report.errors["scorer"] = scorer.describe().get("note", "unavailable")
    return report


def status() -> dict:
    """Nodes, GPUs, GPU memory, the resident replicas and their queues."""
    import ray

    from cluster.engine.resident import REGISTRY_TIMEOUT, actor_handle, registry_actor

    available = ray.available_resources()
    nodes = [{"node_id": n.node_id, "address": n.address, "cpus": n.cpus, "gpus": n.gpus,
              "gpu_memory_gb": n.gpu_memory_gb} for n in cluster_nodes()]
    resident = []
    registry = registry_actor()
    for entry in ray.get(registry.entries.remote(), timeout=REGISTRY_TIMEOUT):
        row = {"name": entry["name"], "kind": entry["kind"], "model": entry["model"],
               "keep_alive_s": entry.get("keep_alive_s")}
        if entry["kind"] == "model":
            try:
                stats = ray.get(actor_handle(entry["name"]).stats.remote(), timeout=10)
                row.update(loaded=stats["loaded"], running=min(1, stats["in_flight"]),
                           queued=max(0, stats["in_flight"] - 1), calls=stats["calls"],
                           idle_seconds=stats["idle_seconds"], node_id=stats["node_id"],
                           memory_plan=stats.get("memory_plan") or entry.get("memory_plan"),
                           peak_gpu_memory_bytes=stats.get("peak_gpu_memory_bytes"))
            except Exception as exc:  # noqa: BLE001 - a replica restarting or retiring right now
                row["state"] = type(exc).__name__
        resident.append(row)
    from cluster.entrypoints.frontdoor.actor import front_door_status

    return {
        "nodes": nodes,
        "available": {k: available.get(k, 0.0) for k in ("CPU", "GPU", GPU_MEMORY_RESOURCE)},
        "resident": resident,
        "front_door": front_door_status(),
        # every group the project holds, so one no replica holds any more is seen (and `down` frees it)
        "placement_groups": ray.get(registry.groups.remote(), timeout=REGISTRY_TIMEOUT),
    }


def open_front_door() -> tuple[dict | None, str]:
    """The front door on this machine's node, when the connected cluster has one here: (what it says
    about itself, or None and why not)."""
    from cluster.entrypoints.frontdoor.actor import start_front_door
    from cluster.errors import as_image_error

    try:
        return start_front_door(), ""
    except Exception as exc:  # noqa: BLE001 - the models are warm without it; runs then go directly
        error = as_image_error(exc)
        return None, error.message if error else " ".join(str(exc).split())[:300]


def bring_down(stop_ray: bool = False) -> list[str]:
    import ray

    from cluster.engine.resident import REGISTRY_NAME, RELEASE_TIMEOUT, registry_actor
    from cluster.entrypoints.frontdoor.actor import stop_front_door

    stop_front_door()  # first: its runs stop and write while their replicas are still there
    registry = registry_actor()
    released = ray.get(registry.release.remote(), timeout=RELEASE_TIMEOUT)
    ray.kill(registry, no_restart=True)
    # the kill is asynchronous: until the name is free, the next `registry_actor()` would get the dying one
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
        except ValueError:
            break
        time.sleep(0.05)
    if stop_ray:
        ray.shutdown()
        command = ray_cli()
        if command:
            subprocess.run([command, "stop"], capture_output=True, timeout=120)
    return released
