"""Model replicas: placement groups, actors, their loading and their end.

One placement group per model, one bundle per replica, strategy PACK: replicas share
a node when it has room and spread only when it does not. Loading is asynchronous:
the scheduler waits on `load_ref`s beside generation calls, so a model that is ready
starts generating while a bigger one is still loading.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from cluster import env
from cluster.errors import ImageGenError, as_image_error, describe_exception
from cluster.observability.events import Events
from cluster.planning.limits import Limits
from cluster.planning.feasibility import batch_cap, checked_plan, replica_fit
from cluster.planning.memory.planner import MemoryPlan
from cluster.engine.leases import Lease, WarmLeases
from cluster.engine.nodes import available_by_node, cluster_nodes
from cluster.engine.replica_choice import Timing, choose_replicas
from cluster.planning.placement import (
    GPU_MEMORY_RESOURCE,
    fmt_bundle,
    NodeCapacity,
    describe,
    replica_bundle,
    replica_capacity,
)
from cluster.work import ReplicaInfo
from models.registry import ModelSpec


# Calls a local replica accepts at once; past the first they wait for the pipeline inside it.
LOCAL_QUEUE_SLOTS = 8
# How long a run waits for its leased replicas' `load` answers before it goes on (cluster.engine.leases):
# a warm replica answers in milliseconds; one still loading (restarted) is left to the scheduler.
LEASE_CHECK_S = 1.0


def _credentials(spec: ModelSpec):
    return env.google_credentials() if spec.backend == "imagen" else None


def history_seconds_per_image(spec: ModelSpec) -> float | None:
    """The model's measured seconds per image in recent runs with its kind of weights, when known."""
    from cluster.observability.history import History, safely

    rows = safely(History().summary)() or {}
    known = [row["seconds_per_image"] for row in rows.values()
             if row["model"] == spec.id and row["weights"] == spec.weights and row["seconds_per_image"]]
    return known[0] if known else None


@dataclass
class Replica:
    name: str
    model: str
    actor: Any
    concurrency: int
    load_ref: Any = None
    loaded: bool = False
    dead: bool = False
    info: ReplicaInfo | None = None
    in_flight: int = 0
    calls: int = 0
    busy_seconds: float = 0.0
    restarts: int = 0
    resident: bool = False  # a warm cluster's replica: shared, and left running after the run
    load_started: float = field(default_factory=time.monotonic)
    retired_incarnation: tuple[str, int] | None = None  # (node, pid) of the process we killed

    @property
    def free(self) -> bool:
        return self.loaded and not self.dead and self.in_flight < self.concurrency


@dataclass
class ModelGroup:
    spec: ModelSpec
    replicas: list[Replica]
    batch_size: int
    placement_group: Any = None
    error: ImageGenError | None = None  # set when no replica can ever serve this model

    @property
    def usable(self) -> bool:
        return self.error is None and any(not r.dead for r in self.replicas)

    @property
    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.free]


class ReplicaPool:
    def __init__(self, limits: Limits, max_parallel: int, events: Events | None = None, run_id: str | None = None,
                 resident: bool = False, keep_alive_s: float | None = None, memory_plan: str | None = None,
                 leases: WarmLeases | None = None):
        """`resident`: use (and leave behind) the cluster's warm replicas instead of run-owned ones.
        `memory_plan`: a plan every local model of the run must use (--memory-plan). `leases`: the
        calling process's warm-replica leases, used and renewed instead of asking the registry each run."""
        self.limits = limits
        self.leases = leases if resident else None
        self.memory_plan = memory_plan
        self._plans: dict[str, MemoryPlan] = {}
        self.max_parallel = max_parallel
        self.resident = resident
        self.keep_alive_s = keep_alive_s
        self.events = events or Events()
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.groups: dict[str, ModelGroup] = {}
        self._nodes: list[NodeCapacity] | None = None
        self._expected: list[ModelSpec] = []
        self._images: dict[str, int] = {}

    def expect(self, specs: list[ModelSpec], images: dict[str, int] | None = None) -> None:
        """The models this run will place (and the images each makes). Until each holds its group,
        one replica's room is kept for it: the first model's extra replicas must not take every
        card the others need."""
        self._expected = list(specs)
        self._images = dict(images or {})

    def _free_for(self, spec: ModelSpec) -> dict[str, float]:
        import ray

        free = dict(ray.available_resources())
        for other in self._expected:
            if other.id == spec.id or other.id in self.groups or not other.is_local:
                continue
            try:
                plan = self.plan(other)
            except ImageGenError:
                continue  # it will fail on its own; it holds nothing
            held = replica_bundle(other, self.nodes, batch=plan.batch, gpu_gb=plan.gpu_gb or None)
            for key in ("GPU", GPU_MEMORY_RESOURCE):
                if key in held:
                    free[key] = max(0.0, free.get(key, 0.0) - held[key])
        return free

    @property
    def nodes(self) -> list[NodeCapacity]:
        if self._nodes is None:
            self._nodes = cluster_nodes()
        return self._nodes

    def batch_cap(self, spec: ModelSpec) -> int:
        """The spec's cap, lowered so that one replica never reserves more than half of a node's
        host memory (memory_limit_per_image)."""
        return batch_cap(spec, self.nodes, self.limits.perf.memory_limit_per_image)

    def plan(self, spec: ModelSpec, width: int | None = None, height: int | None = None) -> MemoryPlan:
        """How each replica of `spec` holds it (planned once per run), or IMG_010 when no plan fits."""
        if spec.id not in self._plans:
            cap = self.batch_cap(spec)
            if not self.resident and spec.id in self._images:  # warm replicas serve later, larger runs too
                cap = max(1, min(cap, self._images[spec.id]))
            self._plans[spec.id] = checked_plan(spec, self.nodes, available_by_node(), width or spec.width,
                                                height or spec.height, cap, self.memory_plan)
        return self._plans[spec.id]

    def batch_size(self, spec: ModelSpec) -> int:
        """Images per call: what the model's memory plan runs within the room a card has now."""
        if not spec.is_local:
            return spec.max_batch_size
        return self.plan(spec).batch

    def ensure(self, spec: ModelSpec, images: int, width: int | None = None, height: int | None = None) -> ModelGroup:
        """The model's replicas, created (and loading) on first use."""
        if spec.id in self.groups:
            return self.groups[spec.id]
        try:
            plan = self.plan(spec, width, height)
            bundle = replica_fit(spec, self.nodes, plan, self.limits.perf.memory_limit_per_image).bundle
            batch = plan.batch if spec.is_local else spec.max_batch_size
        except ImageGenError as exc:
            batch = spec.max_batch_size
            group = ModelGroup(spec, [], batch, error=exc)
            self.groups[spec.id] = group
            self.events.emit("model_unplaceable", model=spec.id, code=exc.code, message=exc.message)
            return group
        count = self._replica_count(spec, images, batch, bundle)
        if spec.is_local:
            self.events.emit("memory_plan", model=spec.id, plan=plan.label, footprint_gb=plan.gpu_gb,
                             batch=batch, reason=plan.reason)
        if self.resident:
            group = self._resident_group(spec, bundle, max(1, count), batch, plan)
        else:
            group = self._place(spec, bundle, count, batch, plan)
        self.groups[spec.id] = group
        return group

    def _replica_count(self, spec: ModelSpec, images: int, batch: int, bundle: dict[str, float]) -> int:
        """Replicas for `images`: remote models as their calls need; a run's own local replicas by
        makespan (cluster.engine.replica_choice) within what can be placed, saying which and why in the
        events; fewer than wanted names the resource that ran out."""
        if not spec.is_local or self.resident:
            # a warm cluster's replicas are shared by later runs: their number is the cluster's
            # (cluster up --replicas), made as the calls at the plan's batch need
            count, short = replica_capacity(spec, images, batch, self.max_parallel, bundle, self.nodes,
                                            self._free_for(spec))
            if short and spec.is_local:
                self.events.emit("replicas_limited", model=spec.id, replicas=count, reason=short)
            return count
        # up to one replica per image: the choice decides between spreading and batching
        capacity, short = replica_capacity(spec, images, 1, self.max_parallel, bundle, self.nodes,
                                           self._free_for(spec))
        timing = Timing(per_image_s=history_seconds_per_image(spec))
        choice = choose_replicas(images, batch, capacity, warm=0, timing=timing)
        if short and capacity < choose_replicas(images, batch, images, warm=0, timing=timing).replicas:
            self.events.emit("replicas_limited", model=spec.id, replicas=capacity, reason=short)
        self.events.emit("replica_choice", model=spec.id, replicas=choice.replicas, batch=choice.batch,
                         makespan_s=choice.makespan_s, reason=choice.reason)
        return choice.replicas

    def _place(self, spec: ModelSpec, bundle: dict[str, float], count: int, batch: int, plan: MemoryPlan
               ) -> ModelGroup:
        from ray.util.placement_group import placement_group, remove_placement_group

        timeout = self.limits.scheduler.placement_timeout
        while True:
            pg = placement_group([dict(bundle) for _ in range(count)], strategy="PACK",
                                 name=f"kamui-{self.run_id}-{spec.id}")
            if pg.wait(timeout_seconds=timeout if count == 1 else min(timeout, 10.0)):
                break
            remove_placement_group(pg)
            if count == 1:
                error = ImageGenError(
                    "IMG_010",
                    f"model {spec.id!r}: the cluster could hold {fmt_bundle(bundle)} but none of it came free within "
                    f"{timeout:g}s (other runs or resident models hold it; cluster: {describe(self.nodes)}). "
                    "See `ray status`, or raise scheduler.placement_timeout.",
                )
                self.events.emit("model_unplaceable", model=spec.id, code=error.code, message=error.message)
                return ModelGroup(spec, [], batch, error=error)
            count = max(1, count // 2)  # resources are busy: fewer replicas beat none
        replicas = [self._start_replica(spec, bundle, pg, i, plan) for i in range(count)]
        self.events.emit("model_loading", model=spec.id, replicas=count, batch_size=batch)
        return ModelGroup(spec, replicas, batch, placement_group=pg)

    def _actor_options(self, spec: ModelSpec, bundle: dict[str, float]) -> tuple[dict[str, Any], int]:
        """Ray options of a replica of `spec` (its bundle's resources), and its call concurrency."""
        concurrency = 1 if spec.is_local else (spec.rate_limit.concurrent_limit or self.max_parallel)
        options: dict[str, Any] = {
            "num_cpus": bundle["CPU"],
            "num_gpus": bundle.get("GPU", 0),
            # local: calls past the first wait on the pipeline's lock inside the actor, where the
            # replica can count them (its queue); remote: the model's concurrent_limit, globally
            "max_concurrency": LOCAL_QUEUE_SLOTS if spec.is_local else concurrency,
            "max_restarts": self.limits.scheduler.actor_max_restarts,
            "max_task_retries": 0,  # the scheduler retries, so every attempt is recorded
        }
        if GPU_MEMORY_RESOURCE in bundle:
            options["resources"] = {GPU_MEMORY_RESOURCE: bundle[GPU_MEMORY_RESOURCE]}
        if bundle.get("memory"):
            options["memory"] = bundle["memory"]
        return options, concurrency

    def _start_replica(self, spec: ModelSpec, bundle: dict[str, float], pg, index: int, plan: MemoryPlan) -> Replica:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from actors.model_actor import ModelActor

        options, concurrency = self._actor_options(spec, bundle)
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=pg,
                                                                          placement_group_bundle_index=index)
        name = f"{spec.id}-{index}"
        actor = ModelActor.options(**options).remote(spec, name, str(env.cache_dir()), _credentials(spec), None,
                                                     self.limits.scheduler.rate_window_seconds,
                                                     bundle.get(GPU_MEMORY_RESOURCE), plan)
        return Replica(name=name, model=spec.id, actor=actor, concurrency=concurrency, load_ref=self._load(actor))

    def _resident_group(self, spec: ModelSpec, bundle: dict[str, float], count: int, batch: int,
                        plan: MemoryPlan) -> ModelGroup:
        """The model's warm replicas: the process's lease on them when every one still answers, else
        from the cluster's ResidentRegistry (made there if none is alive), leased for the next run."""
        options, concurrency = self._actor_options(spec, bundle)
        leased = self._leased(spec)
        if leased is not None:
            lease, loads = leased
            answer = {"names": list(lease.actors), "created": [], "error": None, "batch": lease.batch}
            actors = lease.actors
        else:
            loads = {}
            asked = self._ask_registry(spec, bundle, options, count, batch, plan)
            if isinstance(asked, ModelGroup):  # no replica for it: the group says why
                return asked
            answer, actors = asked
        # the replicas reserved GPU memory for their own batch (set by the run that made them)
        batch = max(1, min(batch, answer.get("batch") or batch))
        replicas = []
        for name, actor in actors.items():
            replicas.append(Replica(name=f"{spec.id}-{name.rsplit('/', 1)[-1]}", model=spec.id, actor=actor,
                                    concurrency=concurrency, load_ref=loads[name] if name in loads else self._load(actor),
                                    resident=True))
        if answer.get("error") and len(replicas) < count:  # the registry placed fewer than asked: say what ran out
            self.events.emit("replicas_limited", model=spec.id, replicas=len(replicas),
                             reason=f"{len(replicas)} of the {count} replicas asked for: {answer['error']}")
        self.events.emit("model_loading", model=spec.id, replicas=len(replicas), batch_size=batch,
                         resident=True, created=len(answer["created"]))
        return ModelGroup(spec, replicas, batch)

    def _ask_registry(self, spec: ModelSpec, bundle: dict[str, float], options: dict[str, Any], count: int,
                      batch: int, plan: MemoryPlan) -> tuple[dict, dict[str, Any]] | ModelGroup:
        """The registry's answer and the replicas' handles (leased when the pool has leases), or the
        unusable group when the registry could not provide a replica."""
        import ray

        from cluster.engine.resident import ReplicaOrder, actor_handle, model_prefix, registry_actor

        timeout = self.limits.scheduler.placement_timeout
        try:
            order = ReplicaOrder(spec, bundle, options, str(env.cache_dir()), _credentials(spec), self.keep_alive_s,
                                 self.limits.scheduler.rate_window_seconds, batch, plan)
            answer = ray.get(registry_actor().ensure_model.remote(order, count, timeout),
                             timeout=timeout * (count + 1) + 30)
            actors = {name: actor_handle(name) for name in answer["names"]}
        except Exception as exc:  # noqa: BLE001 - the registry unreachable or failing: this model cannot run
            error = ImageGenError("IMG_010", f"model {spec.id!r}: the warm cluster could not provide a replica: "
                                             f"{describe_exception(exc)}")
            self.events.emit("model_unplaceable", model=spec.id, code=error.code, message=error.message)
            return ModelGroup(spec, [], batch, error=error)
        if not answer["names"]:
            error = ImageGenError("IMG_010", f"model {spec.id!r}: {answer['error']} (cluster: {describe(self.nodes)}).")
            self.events.emit("model_unplaceable", model=spec.id, code=error.code, message=error.message)
            return ModelGroup(spec, [], batch, error=error)
        if self.leases is not None:
            self.leases.hold(model_prefix(spec), Lease(dict(actors), answer.get("batch") or batch))
        return answer, actors

    def _leased(self, spec: ModelSpec) -> tuple[Lease, dict[str, Any]] | None:
        """The process's lease on `spec`'s warm replicas and their `load` calls, when none of those
        that answered within LEASE_CHECK_S failed; None (the lease dropped): ask the registry."""
        if self.leases is None:
            return None
        import ray

        from cluster.engine.resident import model_prefix

        key = model_prefix(spec)
        lease = self.leases.get(key)
        if lease is None:
            return None
        loads = {name: self._load(actor) for name, actor in lease.actors.items()}
        ready, _ = ray.wait(list(loads.values()), num_returns=len(loads), timeout=LEASE_CHECK_S)
        for ref in ready:
            try:
                ray.get(ref)
            except Exception:  # noqa: BLE001 - died, retired or released: the registry replaces it
                self.leases.drop(key, lease)
                return None
        return lease, loads

    def _drop_lease(self, model: str) -> None:
        """A leased replica failed in this run: the next run asks the registry again."""
        group = self.groups.get(model)
        if self.leases is not None and group is not None:
            from cluster.engine.resident import model_prefix

            self.leases.drop(model_prefix(group.spec))

    # --- loading -------------------------------------------------------------------------

    def _load(self, actor):
        # Loading is idempotent, so Ray may resubmit it to a restarted actor; a load sent while the
        # actor restarts would otherwise fail with "actor temporarily unavailable".
        return actor.load.options(max_task_retries=self.limits.scheduler.actor_max_restarts + 1).remote()

    def loading_refs(self) -> dict[Any, Replica]:
        return {r.load_ref: r for g in self.groups.values() for r in g.replicas if r.load_ref is not None}

    def on_loaded(self, replica: Replica) -> None:
        """Called by the scheduler when `replica.load_ref` is ready."""
        import ray

        ref, replica.load_ref = replica.load_ref, None
        try:
            info = ray.get(ref)
            if replica.retired_incarnation == (info.node_id, info.pid):
                # ray.kill is asynchronous: the dying process answered; ask the restarted one
                replica.load_ref = self._load(replica.actor)
                return
            replica.info = info
            replica.loaded = True
            self.events.emit("model_loaded", model=replica.model, replica=replica.name,
                             seconds=round(replica.info.load_seconds, 2), device=replica.info.device,
                             warm=replica.info.warm)
        except Exception as exc:  # noqa: BLE001 - any load failure ends this replica
            replica.dead = True
            if replica.resident:
                self._drop_lease(replica.model)
            error = as_image_error(exc) or ImageGenError(
                "IMG_020", f"model {replica.model!r} replica {replica.name} failed to load: {describe_exception(exc)}"
            )
            group = self.groups[replica.model]
            if not group.usable:
                group.error = error
            self.events.emit("model_load_failed", model=replica.model, replica=replica.name,
                             code=error.code, message=error.message)

    def expire_loads(self, now: float) -> None:
        for group in self.groups.values():
            for replica in group.replicas:
                if replica.load_ref is not None and now - replica.load_started > self.limits.scheduler.model_load_timeout:
                    replica.load_ref = None
                    replica.dead = True
                    self._kill(replica)
                    if not group.usable:
                        group.error = ImageGenError(
                            "IMG_010", f"model {group.spec.id!r} did not load within "
                            f"{self.limits.scheduler.model_load_timeout:g}s (scheduler.model_load_timeout).",
                        )

    # --- recovery ---------------------------------------------------------------------

    def restart(self, replica: Replica) -> None:
        """Kill a stuck replica; Ray restarts it (max_restarts) and it reloads on its next call."""
        import ray

        if replica.info is not None:
            replica.retired_incarnation = (replica.info.node_id, replica.info.pid)
        try:
            ray.kill(replica.actor, no_restart=False)
        except Exception:  # already gone
            pass
        self.on_died(replica)

    def on_died(self, replica: Replica) -> None:
        """The replica's process is gone. Ray restarts it while restarts remain; it loads again
        before it gets work, so its reload never counts against a call's timeout."""
        replica.restarts += 1
        replica.loaded = False
        if replica.resident:
            self._drop_lease(replica.model)
        if replica.restarts > self.limits.scheduler.actor_max_restarts:
            replica.dead = True
            replica.load_ref = None
            group = self.groups[replica.model]
            if not group.usable:
                group.error = ImageGenError("IMG_020", f"every replica of {replica.model!r} died too often.")
        else:
            replica.load_started = time.monotonic()
            replica.load_ref = self._load(replica.actor)
        self.events.emit("replica_restarted", model=replica.model, replica=replica.name, restarts=replica.restarts)

    # --- the end ------------------------------------------------------------------------

    def collect_infos(self) -> dict[str, list[ReplicaInfo]]:
        import ray

        infos: dict[str, list[ReplicaInfo]] = {}
        for model, group in self.groups.items():
            for replica in group.replicas:
                info = replica.info
                if replica.loaded and not replica.dead and info is not None:
                    try:
                        fresh = ray.get(replica.actor.info.remote(), timeout=10)
                        # peak memory as of now; load time and warmth as this run saw them
                        info = replace(fresh, load_seconds=info.load_seconds, warm=info.warm)
                    except Exception:  # noqa: BLE001 - keep the load-time info
                        pass
                if info is not None:
                    info.restarts = max(info.restarts, replica.restarts)
                    infos.setdefault(model, []).append(info)
        return infos

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group

        removing = []
        for group in self.groups.values():
            for replica in group.replicas:
                if not replica.resident:
                    self._kill(replica, restart=False)
            if group.placement_group is not None:
                try:
                    remove_placement_group(group.placement_group)
                    removing.append(group.placement_group)
                except Exception:  # noqa: BLE001 - the cluster may be going away too
                    pass
        self.groups.clear()
        wait_removed(removing)

    def _kill(self, replica: Replica, restart: bool = False) -> None:
        import ray

        try:
            ray.kill(replica.actor, no_restart=not restart)
        except Exception:  # noqa: BLE001
            pass




def wait_removed(groups: list, timeout_s: float = 5.0) -> None:
    """Until the resources of removed placement `groups` are back (Ray removes them
    asynchronously): a next run on this cluster would otherwise find their cards still held and
    place fewer replicas."""
    import ray

    ids = [group.id.hex() for group in groups]
    deadline = time.monotonic() + timeout_s
    while ids and time.monotonic() < deadline:
        try:
            held = " ".join(ray.available_resources())
        except Exception:  # noqa: BLE001 - the cluster may be going away too
            return
        if not any(pg_id in held for pg_id in ids):
            return
        time.sleep(0.05)
