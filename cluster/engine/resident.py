"""Resident (warm) model replicas: detached, named actors in the project's Ray namespace that
outlive the run that made them, so the next run spends no time loading.

One detached `ResidentRegistry` actor creates and tracks them. Every run asks it, so two
runs wanting the same model at once get the same replicas instead of racing to create
two (state lives in an actor, not in any driver). Each replica holds its own placement
group (its GPUs and gpu_memory_gb), so warm replicas count against the cluster exactly as
a run's own do, and can retire alone when their keep-alive runs out.
"""

from __future__ import annotations

import functools

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import ray

from actors.model_actor import REGISTRY_NAME
from models.registry import ModelSpec
from models.scorers import ScorerSpec

# Seconds a registry call that places nothing may take (it serves one call at a time).
REGISTRY_TIMEOUT = 60.0
# Releasing waits up to 10 s for each replica's name to come free.
RELEASE_TIMEOUT = 600.0


def spec_key(spec: ModelSpec | ScorerSpec) -> str:
    """Replicas are shared only between runs that describe the model identically."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:10]


def model_prefix(spec: ModelSpec) -> str:
    return f"model/{spec.id}/{spec_key(spec)}/"


GROUP_PREFIX = "model/"


@dataclass(frozen=True)
class ReplicaOrder:
    """What the registry makes a model's resident replicas with (sent to it, so picklable)."""

    spec: ModelSpec
    bundle: dict[str, float]  # each replica's placement-group bundle
    options: dict[str, Any]  # the actor's Ray options (restarts, concurrency, custom resources)
    cache_root: str
    credentials: Any  # a remote model's, passed so nodes without the key in their environment work
    keep_alive_s: float | None  # idle seconds before a replica retires (the cluster's own setting wins)
    rate_window_s: float
    batch: int = 1  # images per call the bundle reserves GPU memory for
    plan: Any = None  # the memory plan (cluster.planning.memory.planner.MemoryPlan)


def project_groups() -> dict[str, dict]:
    """Every placement group of a resident replica that Ray still holds, by name (a detached group
    outlives whatever made it, so Ray's table, not the registry's memory, is the truth)."""
    from ray.util.placement_group import placement_group_table

    groups = {}
    for group_id, row in placement_group_table().items():
        name = row.get("name") or ""
        if name.startswith(GROUP_PREFIX) and row.get("state") != "REMOVED":
            groups[name] = {"id": group_id, "state": row.get("state"),
                            "bundles": list((row.get("bundles") or {}).values())}
    return groups


def _remove_group(group_id: str) -> None:
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group_id))))
    except Exception:  # noqa: BLE001 - already removed
        pass


class ResidentRegistry:
    def __init__(self, namespace: str):
        self.namespace = namespace
        self.meta: dict[str, dict] = {}  # actor name -> what `status` shows
        # The cluster's own settings, from `cluster up`: a model reloaded after it retired gets
        # these, not the settings of whichever run happened to need it next.
        self.settings: dict[str, Any] = {"keep_alive_s": None, "replicas": {}}

    def configure(self, keep_alive_s: float | None = None, replicas: dict[str, int] | None = None) -> dict:
        if keep_alive_s is not None:
            self.settings["keep_alive_s"] = keep_alive_s
        self.settings["replicas"].update(replicas or {})
        return dict(self.settings)

    def _exists(self, name: str) -> bool:
        try:
            ray.get_actor(name, namespace=self.namespace)
            return True
        except ValueError:
            return False

    def _alive(self, name: str) -> bool:
        if self._exists(name):
            return True
        self._forget(name)
        return False

    def _forget(self, name: str) -> None:
        """A replica that is gone for good (killed past its restarts, its node lost): its detached
        group would otherwise keep its resources and its name, and no replica could take either."""
        meta = self.meta.pop(name, None)
        if meta and meta.get("placement_group") is not None:
            try:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(meta["placement_group"])
            except Exception:  # noqa: BLE001 - already removed
                pass

    def sweep(self) -> list[str]:
        """Forget dead replicas and remove every project group no live replica holds (left by a
        replica that died, or by an earlier registry). Returns the groups removed."""
        for name in list(self.meta):
            self._alive(name)
        removed = []
        for name, group in project_groups().items():
            if name in self.meta or self._exists(name):
                continue
            _remove_group(group["id"])
            removed.append(name)
        return removed

    def ensure_model(self, order: ReplicaOrder, count: int, placement_timeout: float) -> dict:
        """The model's live resident replicas as they are; when none is alive, new ones made as
        `order` says: as many as the cluster was brought up with for this model, else `count`. (A warm
        cluster's size is what `cluster up --replicas` made it: runs share it rather than grow it.)
        Returns {"names", "created", "batch", "error"}; `batch`: images per call the replicas'
        groups reserved GPU memory for."""
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from actors.model_actor import ModelActor
        from cluster.engine.nodes import available_by_node
        from cluster.planning.placement import fmt_bundle, missing_resources

        spec, bundle, batch, plan = order.spec, order.bundle, order.batch, order.plan
        self.sweep()
        prefix = model_prefix(spec)
        names = [n for n in sorted(self.meta) if n.startswith(prefix)]
        if names:
            return {"names": names, "created": [], "error": None,
                    "batch": min(self.meta[n].get("batch", 1) for n in names)}
        keep_alive_s = self.settings["keep_alive_s"] or order.keep_alive_s
        count = self.settings["replicas"].get(spec.id, count)
        created, error = [], None
        index = 0
        while len(names) < count:
            while f"{prefix}{index}" in self.meta:
                index += 1
            name = f"{prefix}{index}"
            group = placement_group([dict(bundle)], strategy="PACK", name=name, lifetime="detached")
            if not group.wait(timeout_seconds=placement_timeout):
                remove_placement_group(group)
                error = (f"no room for another replica of {spec.id} within {placement_timeout:g}s: each holds "
                         f"{fmt_bundle(bundle)}, and {missing_resources(bundle, available_by_node() or {})} ran out")
                break
            ModelActor.options(
                name=name, namespace=self.namespace, lifetime="detached", get_if_exists=True,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=group,
                                                                     placement_group_bundle_index=0),
                **order.options,
            ).remote(spec, f"{spec.id}-{index}", order.cache_root, order.credentials, keep_alive_s, order.rate_window_s,
                     bundle.get("gpu_memory_gb"), plan)
            self.meta[name] = {"kind": "model", "model": spec.id, "key": spec_key(spec), "created": time.time(),
                               "keep_alive_s": keep_alive_s, "bundle": bundle, "batch": batch,
                               "memory_plan": plan.as_dict() if plan is not None else None,
                               "placement_group": group}
            names.append(name)
            created.append(name)
        return {"names": names, "created": created, "error": error, "batch": batch}

    def ensure_scorer(self, spec: ScorerSpec, options: dict[str, Any], cache_root: str) -> str:
        from actors.scorer_actor import ScorerActor

        return self._ensure_singleton("scorer", ScorerActor, spec, options, cache_root)

    def ensure_translator(self, spec, cache_root: str, credentials) -> str:
        """The cluster's translator for `spec`, kept warm (its cache with it) like the model replicas."""
        from actors.translator_actor import TranslatorActor

        return self._ensure_singleton("translator", TranslatorActor, spec, {}, cache_root, credentials)

    def _ensure_singleton(self, kind: str, actor_cls, spec, options: dict[str, Any], *args) -> str:
        """The one detached `kind` actor for `spec` (its config's key in the name), created when absent."""
        name = f"{kind}/{spec.id}/{spec_key(spec)}"
        if name not in self.meta or not self._alive(name):
            actor_cls.options(name=name, namespace=self.namespace, lifetime="detached", get_if_exists=True,
                              **options).remote(spec, *args)
            self.meta[name] = {"kind": kind, "model": spec.id, "key": spec_key(spec), "created": time.time(),
                               "keep_alive_s": None, "bundle": options}
        return name

    def entries(self) -> list[dict]:
        rows = []
        for name in list(self.meta):
            if self._alive(name):
                meta = {k: v for k, v in self.meta[name].items() if k != "placement_group"}
                rows.append({"name": name, **meta})
        return rows

    def groups(self) -> list[dict]:
        """Every project placement group with the live replica holding it (None: nothing does)."""
        return [{"name": name, "state": group["state"], "bundles": group["bundles"],
                 "held_by": name if name in self.meta and self._alive(name) else None}
                for name, group in sorted(project_groups().items())]

    def release(self, model: str | None = None, names: list[str] | None = None) -> list[str]:
        """Kill resident replicas (all, one model's, or the named ones) and free their resources;
        releasing all also removes groups no replica holds."""
        released = []
        for name, meta in list(self.meta.items()):
            if model is not None and meta["model"] != model:
                continue
            if names is not None and name not in names:
                continue
            try:
                ray.kill(ray.get_actor(name, namespace=self.namespace), no_restart=True)
            except ValueError:
                pass
            # the kill is asynchronous; the name must be free before a new replica may take it
            deadline = time.monotonic() + 10
            while self._exists(name) and time.monotonic() < deadline:
                time.sleep(0.05)
            self._forget(name)
            released.append(name)
        if model is None and names is None:
            released += self.sweep()
        return released


@functools.cache
def _registry_class():
    # made once per process: Ray keeps every actor class it is given (its methods wrapped, its
    # signatures read), so making one per call grew a long-running server by ~15 KB a request
    return ray.remote(num_cpus=0, max_concurrency=1)(ResidentRegistry)


def registry_actor():
    """The cluster's one ResidentRegistry (created on first use, lives with the cluster)."""
    from cluster.engine.ray_runtime import NAMESPACE

    return _registry_class().options(name=REGISTRY_NAME, namespace=NAMESPACE, lifetime="detached",
                                     get_if_exists=True).remote(NAMESPACE)


def actor_handle(name: str):
    from cluster.engine.ray_runtime import NAMESPACE

    return ray.get_actor(name, namespace=NAMESPACE)
