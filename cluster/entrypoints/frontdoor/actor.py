"""The front door as the cluster's own process: a detached, named Ray actor on this machine's node
(its socket is a file here), started by `cluster up` and stopped by `cluster down`. Being a process
of the cluster, it is connected once, for good; its runs use the warm replicas like any other."""

from __future__ import annotations

import time
from pathlib import Path

import ray

from cluster.engine.ray_runtime import NAMESPACE
from cluster.entrypoints.frontdoor.protocol import socket_path

ACTOR_NAME = "front-door"
START_TIMEOUT_S = 120.0


class FrontDoorActor:
    def __init__(self, path: str):
        from cluster.entrypoints.frontdoor.server import FrontDoor

        self.door = FrontDoor(Path(path), ray.get_runtime_context().gcs_address).start()

    def describe(self) -> dict:
        return self.door.describe()

    def close(self, timeout_s: float) -> int:
        return self.door.close(timeout_s)


def _handle():
    try:
        return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def start_front_door(path: Path | None = None) -> dict:
    """The front door of the connected cluster, listening at `path` (default: this user's runtime
    folder), started on this machine's node unless one runs; what it says about itself."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    path = path or socket_path()
    handle = _handle()
    if handle is not None:
        try:
            info = ray.get(handle.describe.remote(), timeout=10)
            if info["socket"] == str(path):
                return info
        except Exception:  # noqa: BLE001 - a dying one: replaced below
            pass
        stop_front_door()
    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_concurrency=4)(FrontDoorActor).options(
        name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(str(path))
    return ray.get(actor.describe.remote(), timeout=START_TIMEOUT_S)


def front_door_status() -> dict | None:
    handle = _handle()
    if handle is None:
        return None
    try:
        return ray.get(handle.describe.remote(), timeout=10)
    except Exception as exc:  # noqa: BLE001 - starting or dying right now
        return {"state": type(exc).__name__}


def stop_front_door(timeout_s: float = 20.0) -> bool:
    """Close the front door (runs in progress stop as on SIGTERM, with `timeout_s` to write) and end
    its actor; False when none ran."""
    handle = _handle()
    if handle is None:
        return False
    try:
        ray.get(handle.close.remote(timeout_s), timeout=timeout_s + 10)
    except Exception:  # noqa: BLE001 - already dead: its name still has to go
        pass
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + 10
    while _handle() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return True
