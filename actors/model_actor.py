"""The Ray actor around a generator: a few lines, so the generator classes stay Ray-free.

Generation calls run in the default concurrency group: one at a time on a local replica
(its generator holds a lock; calls of several runs sharing a resident replica queue
there), `concurrent_limit` at once on a remote-API replica. `cancel`, `info` and `stats`
run in their own "control" group, so they get through however many calls are queued.

A resident replica (a warm cluster's) may retire itself after `keep_alive_s` idle
seconds: it asks the ResidentRegistry to release it, which ends the actor and removes its
placement group, freeing its GPU memory and its share of the cluster's resources; the
next run that needs the model loads it again.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import ray

from actors.core.backends import make_backend
from actors.core.coalescing import Coalescer
from cluster import env
from cluster.work import CallOptions, FailedImage, GeneratedImage, ImageTask, ReplicaInfo
from models.registry import ModelSpec

CONTROL = "control"
# The resident registry's actor name (cluster.engine.resident creates it under this name): a
# retiring replica asks it, by name, to release the replica.
REGISTRY_NAME = "resident-registry"


class RequestWindow:
    """requests_per_minute held by the replica itself, so it stays global when several runs
    share one resident replica (each run's scheduler only sees its own calls)."""

    def __init__(self, per_window: float | None, window_s: float):
        self.per_window = per_window
        self.window_s = window_s
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.per_window is None:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                while self._starts and now - self._starts[0] >= self.window_s:
                    self._starts.popleft()
                if len(self._starts) < self.per_window:
                    self._starts.append(now)
                    return
                wait = self._starts[0] + self.window_s - now
            time.sleep(max(0.01, wait))


class ModelWorker:
    """Constructed cheaply; `load()` brings the weights in. Keeping the load out of `__init__`
    lets its errors (IMG_002 missing weights, IMG_010 no free memory) reach the driver as
    themselves instead of as an opaque "actor died in its creation task"."""

    def __init__(self, spec: ModelSpec, replica: str, cache_root: str, credentials=None,
                 keep_alive_s: float | None = None, rate_window_s: float = 60.0, gpu_reserve_gb: float | None = None,
                 memory_plan=None):
        self.spec = spec
        self.gpu_reserve_gb = gpu_reserve_gb
        self.memory_plan = memory_plan  # cluster.planning.memory.planner.MemoryPlan, chosen by the driver
        # Passed by the driver so a remote model works on nodes that do not have the key in their
        # environment; GoogleCredentials keeps the key out of its repr.
        self.credentials = credentials
        self.replica = replica
        self.cache_root = Path(cache_root)
        self.backend = None
        self._info: ReplicaInfo | None = None
        self._load_lock = threading.Lock()
        self._window = RequestWindow(spec.rate_limit.requests_per_minute, rate_window_s)
        self.calls = 0
        self.in_flight = 0
        self.last_used = time.time()
        # a local replica's queued calls share pipeline calls, up to the batch its memory plan holds
        batch = memory_plan.batch if memory_plan is not None else spec.max_batch_size
        self._coalescer = Coalescer(self._run_pipeline, self._cancel_backend, batch) if spec.is_local else None
        if keep_alive_s:
            threading.Thread(target=self._keep_alive, args=(keep_alive_s,), daemon=True).start()

    def load(self) -> ReplicaInfo:
        """Load once; a caller finding the weights already resident gets `warm=True`, load time 0."""
        with self._load_lock:
            if self.backend is not None:
                return replace(self.info(), load_seconds=0.0, warm=True)
            self.backend = make_backend(self.spec, self.cache_root, self.replica, self.credentials,
                                        self.gpu_reserve_gb, self.memory_plan)
            context = ray.get_runtime_context()
            device = str(getattr(self.backend, "device_label", None) or getattr(self.backend, "device", "remote"))
            gpu_ids = [str(g) for g in ray.get_gpu_ids()]
            self._info = ReplicaInfo(
                model=self.spec.id,
                replica=self.replica,
                node_id=context.get_node_id(),
                device=device,
                dtype=str(getattr(self.backend, "dtype", "")).replace("torch.", ""),
                weights=self.spec.weights,
                load_seconds=float(getattr(self.backend, "load_seconds", 0.0)),
                gpu_ids=gpu_ids,
                restarts=1 if context.was_current_actor_reconstructed else 0,
                pid=os.getpid(),
                note="; ".join(n for n in (_cpu_note(device, gpu_ids), getattr(self.backend, "dtype_note", "")) if n),
                memory_plan=self._plan_record(),
                speed=getattr(getattr(self.backend, "speed", None), "as_dict", lambda: None)(),
                card=getattr(self.backend, "card_name", "") if self.spec.is_local else "",
                gpu_share=float(context.get_assigned_resources().get("GPU", 0.0)),
            )
            self.last_used = time.time()
        return self.info()

    def _plan_record(self) -> dict | None:
        """The plan as carried out (a backend may hold the model otherwise, e.g. over several cards)."""
        applied = getattr(self.backend, "memory_plan", None) or self.memory_plan
        return applied.as_dict() if applied is not None else None

    @ray.method(concurrency_group=CONTROL)
    def info(self) -> ReplicaInfo:
        assert self._info is not None, "load() first"
        self._info.peak_gpu_memory_bytes = getattr(self.backend, "peak_gpu_memory_bytes", None)
        return self._info

    @ray.method(concurrency_group=CONTROL)
    def stats(self) -> dict:
        return {"model": self.spec.id, "replica": self.replica, "loaded": self.backend is not None,
                "memory_plan": self._plan_record(),
                "peak_gpu_memory_bytes": getattr(self.backend, "peak_gpu_memory_bytes", None),
                "in_flight": self.in_flight, "calls": self.calls, "idle_seconds": round(time.time() - self.last_used, 1),
                "merged_calls": self._coalescer.merged_calls if self._coalescer is not None else 0,
                "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    @ray.method(concurrency_group=CONTROL)
    def pid(self) -> int:
        return os.getpid()

    def generate(self, tasks: list[ImageTask], call_id: str, options: CallOptions | None = None
                 ) -> list[GeneratedImage | FailedImage]:
        self.in_flight += 1
        try:
            if self.backend is None:  # a restarted replica reloads on its first call
                self.load()
            self.calls += 1
            if self._coalescer is not None:
                return self._coalescer.submit(tasks, call_id, options)
            return self._run_pipeline(tasks, call_id, options)
        finally:
            self.in_flight -= 1
            self.last_used = time.time()

    def _run_pipeline(self, tasks: list[ImageTask], call_id: str, options: CallOptions | None):
        self._window.acquire()
        return self.backend.generate(tasks, call_id, options)

    def _cancel_backend(self, call_id: str, code: str, reason: str) -> None:
        cancel = getattr(self.backend, "cancel", None) if self.backend is not None else None
        if cancel is not None:
            cancel(call_id, code, reason)

    @ray.method(concurrency_group=CONTROL)
    def cancel(self, call_id: str, code: str = "IMG_003", reason: str = "cancelled") -> None:
        if self._coalescer is not None:
            self._coalescer.cancel(call_id, code, reason)
        else:
            self._cancel_backend(call_id, code, reason)

    def _keep_alive(self, keep_alive_s: float) -> None:
        while True:
            time.sleep(min(5.0, max(0.2, keep_alive_s / 4)))
            # idle means loaded (or never asked to load) with nothing running: a slow load must not
            # count as idle time, or the replica would retire before it served anything
            if self._load_lock.locked():
                continue
            if self.in_flight == 0 and time.time() - self.last_used >= keep_alive_s:
                self._retire()
                return

    def _retire(self) -> None:
        # The registry kills this replica without restart and then removes its placement group:
        # removing the group first would leave a detached, restartable actor "restarting" forever.
        context = ray.get_runtime_context()
        name = context.get_actor_name()
        try:
            registry = ray.get_actor(REGISTRY_NAME, namespace=context.namespace)
        except ValueError:
            registry = None
        if name and registry is not None:
            registry.release.remote(names=[name])
        else:
            ray.kill(context.current_actor, no_restart=True)


def _cpu_note(device: str, gpu_ids: list[str]) -> str:
    """Say so when Ray gave this replica a GPU it cannot use (a logical GPU, a CPU-only torch,
    a driver the process cannot reach): silently running on the CPU would look like a slow card."""
    if device != "cpu" or not gpu_ids:
        return ""
    import torch

    reason = ("torch was built without CUDA" if torch.version.cuda is None
              else "torch.cuda.is_available() is False in this process (no driver or device visible)")
    return (f"Ray assigned GPU id(s) {', '.join(gpu_ids)} (CUDA_VISIBLE_DEVICES="
            f"{env.cuda_visible_devices() or ''!r}) but this replica runs on the CPU: {reason}")


ModelActor = ray.remote(concurrency_groups={CONTROL: 2})(ModelWorker)
