"""Warm-replica leases: a long-lived process (the API's Serve replica, the CLI's front door) keeps
the handles of the warm replicas the cluster's ResidentRegistry last gave it, so a request reaches its replica
without first asking the registry (one actor call that serves one caller at a time, plus a name
lookup per replica).

A lease never keeps a replica alive: Ray handles do not hold a detached actor, and a replica
still retires after its keep-alive, released by the registry. Every run that uses a lease checks
it with the `load` call a run makes anyway (cluster.engine.replicas): a replica that died,
retired or was released answers that call with an error, and the lease is dropped there, so the
run asks the registry, which replaces the replica. Leases are the caller's process's own state;
the registry stays the one truth shared between processes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Lease:
    """What the registry answered for one model: its replicas' actor names and handles, and the
    images per call their groups reserved memory for."""

    actors: dict[str, Any]
    batch: int


class WarmLeases:
    """The process's leases by model key (cluster.engine.resident.model_prefix); shared by the
    process's runs, which may run in threads at once."""

    def __init__(self) -> None:
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Lease | None:
        with self._lock:
            return self._held.get(key)

    def hold(self, key: str, lease: Lease) -> None:
        with self._lock:
            self._held[key] = lease

    def drop(self, key: str, lease: Lease | None = None) -> None:
        """Forget `key`'s lease (only `lease`, when given: another run may have renewed it since)."""
        with self._lock:
            if lease is None or self._held.get(key) is lease:
                self._held.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._held)
