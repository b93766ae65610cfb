"""The Ray actor around a generator: a few lines, so the generator classes stay Ray-free.

A local replica runs one generation call at a time (its generator holds a lock), and
is created with `max_concurrency=2` so a second thread stays free for `cancel()` and
`info()` while a call runs. A remote-API replica takes `concurrent_limit` calls at once.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import ray

from actors.backends import make_backend
from cluster.work import CallOptions, FailedImage, GeneratedImage, ImageTask, ReplicaInfo
from models.registry import ModelSpec


class ModelWorker:
    """Constructed cheaply; `load()` brings the weights in. Keeping the load out of `__init__`
    lets its errors (IMG_002 missing weights, IMG_010 no free memory) reach the driver as
    themselves instead of as an opaque "actor died in its creation task"."""

    def __init__(self, spec: ModelSpec, replica: str, cache_root: str, credentials=None):
        self.spec = spec
        # Passed by the driver so a remote model works on nodes that do not have the key in their
        # environment; GoogleCredentials keeps the key out of its repr.
        self.credentials = credentials
        self.replica = replica
        self.cache_root = Path(cache_root)
        self.backend = None
        self._info: ReplicaInfo | None = None
        self._load_lock = threading.Lock()
        self.calls = 0
        self.last_used = time.time()

    def load(self) -> ReplicaInfo:
        with self._load_lock:
            if self.backend is None:
                self.backend = make_backend(self.spec, self.cache_root, self.replica, self.credentials)
                context = ray.get_runtime_context()
                self._info = ReplicaInfo(
                    model=self.spec.id,
                    replica=self.replica,
                    node_id=context.get_node_id(),
                    device=str(getattr(self.backend, "device", "remote")),
                    dtype=str(getattr(self.backend, "dtype", "")).replace("torch.", ""),
                    weights=self.spec.weights,
                    load_seconds=float(getattr(self.backend, "load_seconds", 0.0)),
                    gpu_ids=[str(g) for g in ray.get_gpu_ids()],
                    restarts=1 if context.was_current_actor_reconstructed else 0,
                    pid=os.getpid(),
                )
        return self.info()

    def info(self) -> ReplicaInfo:
        assert self._info is not None, "load() first"
        self._info.peak_gpu_memory_bytes = getattr(self.backend, "peak_gpu_memory_bytes", None)
        return self._info

    def pid(self) -> int:
        return os.getpid()

    def generate(self, tasks: list[ImageTask], call_id: str, options: CallOptions | None = None
                 ) -> list[GeneratedImage | FailedImage]:
        if self.backend is None:  # a restarted replica reloads on its first call
            self.load()
        self.calls += 1
        try:
            return self.backend.generate(tasks, call_id, options)
        finally:
            self.last_used = time.time()

    def cancel(self, call_id: str, code: str = "IMG_003", reason: str = "cancelled") -> None:
        cancel = getattr(self.backend, "cancel", None) if self.backend is not None else None
        if cancel is not None:
            cancel(call_id, code, reason)


ModelActor = ray.remote(ModelWorker)
