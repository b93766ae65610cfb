"""The scoring stage: every finished image gets a `QualityScore` before anything is written.

`ActorScorer` runs the CLIP scorer actor (GPU-resident on a GPU cluster, a fractional
card is enough; CPU otherwise). When the configured CLIP weights are not on this machine,
or the scorer fails to load, the run falls back to `WeightFreeScorer` and the report
records why: alignment and aesthetics are then "unavailable", never invented.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from cluster import env
from cluster.errors import describe_exception
from cluster.observability.events import Events
from cluster.planning.limits import Limits
from cluster.planning.placement import GPU_MEMORY_RESOURCE, NodeCapacity, describe, gpu_share, smallest_card_gb, uses_gpus
from cluster.output.png import decode
from cluster.quality.score import QualityScore, weight_free_score
from cluster.work import GeneratedImage
from models.scorers import NO_SCORER, ScorerSpec, ScoringConfig


class Scorer(Protocol):
    def start(self) -> None: ...

    def score(self, images: list[GeneratedImage]) -> list[QualityScore]: ...

    def describe(self) -> dict: ...

    def release(self) -> None: ...


class WeightFreeScorer:
    """Technical quality and artifacts on the driver (NumPy); no model weights involved."""

    def __init__(self, reason: str = "no CLIP scorer in this run"):
        self.reason = reason

    def score(self, images: list[GeneratedImage]) -> list[QualityScore]:
        return [
            weight_free_score(np.asarray(decode(img.png)), (img.task.width, img.task.height),
                              img.nonfinite_fraction, self.reason)
            for img in images
        ]

    def start(self) -> None:
        pass

    def describe(self) -> dict:
        return {"name": "weight-free", "weights": "none", "note": self.reason}

    def release(self) -> None:
        pass


def _assigned_gpus(_worker) -> list[str]:
    """Run inside the scorer actor: the GPU ids Ray assigned it."""
    import ray

    return [str(g) for g in ray.get_gpu_ids()]


class ActorScorer:
    """Scores through the CLIP scorer actor. `start()` creates it and its loading begins in the
    background. A run starts it once its models hold their placement groups: on a card too small
    for a model and the scorer together, the images come first and the scorer takes the card when
    the models let go of it. Every wait on it is bounded; past a bound it scores weight-free and
    the report says why."""

    def __init__(self, spec: ScorerSpec, nodes: list[NodeCapacity], events: Events | None = None, actor=None,
                 placement_timeout: float = 60.0, load_timeout: float = 1200.0, start: bool = True):
        self.spec = spec
        self.nodes = nodes
        self.events = events or Events()
        self.owned = actor is None
        self.actor = actor
        self.placement_timeout = placement_timeout
        self.load_timeout = load_timeout
        self._placed_ref = None
        self._load_ref = None
        self._info: dict | None = None
        self._fallback: WeightFreeScorer | None = None
        if start:
            self.start()

    @staticmethod
    def actor_options(spec: ScorerSpec, nodes: list[NodeCapacity]) -> dict:
        options: dict = {"num_cpus": spec.cpus, "max_restarts": 1, "max_concurrency": 2}
        if uses_gpus(nodes):
            card = smallest_card_gb(nodes)
            options["num_gpus"] = gpu_share(spec.gpus, spec.gpu_memory_gb, card)
            if card and spec.gpu_memory_gb > 0:
                options["resources"] = {GPU_MEMORY_RESOURCE: spec.gpu_memory_gb}
        return options

    def start(self) -> None:
        if self._load_ref is not None or self._fallback is not None:
            return
        if self.actor is None:
            from actors.scorer_actor import ScorerActor

            self.actor = ScorerActor.options(**self.actor_options(self.spec, self.nodes)).remote(
                self.spec, str(env.cache_dir()))
        self._placed_ref = self.actor.stats.remote()  # answers as soon as Ray has placed the actor
        self._load_ref = self.actor.load.remote()

    def _give_up(self, reason: str) -> None:
        self._fallback = WeightFreeScorer(reason)
        self.events.emit("scorer_failed", scorer=self.spec.id, message=reason)
        self.release()  # an owned scorer still waiting for room must not take it later

    def _ready(self) -> bool:
        import ray

        if self._info is None and self._fallback is None:
            self.start()
            placed, _ = ray.wait([self._placed_ref], timeout=self.placement_timeout)
            if not placed:
                options = self.actor_options(self.spec, self.nodes)
                self._give_up(
                    f"CLIP scorer {self.spec.id!r} found no room within {self.placement_timeout:g}s "
                    f"(needs {options.get('num_gpus', 0):g} GPU and {self.spec.gpu_memory_gb:g} GB GPU memory; "
                    f"cluster: {describe(self.nodes)}; `ray status` shows what holds it)")
                return False
            try:
                self._info = ray.get(self._load_ref, timeout=self.load_timeout)
                # where it runs, in the report beside each model replica's (which card it shares)
                self._info["gpu_ids"] = ray.get(self.actor.__ray_call__.remote(_assigned_gpus), timeout=60)
                self.events.emit("scorer_loaded", scorer=self.spec.id, seconds=self._info.get("load_seconds"),
                                 device=self._info.get("device"))
            except Exception as exc:  # noqa: BLE001 - a scorer that cannot load leaves weight-free scores
                self._give_up(f"CLIP scorer {self.spec.id!r} failed to load: {describe_exception(exc)}")
        return self._fallback is None

    def score(self, images: list[GeneratedImage]) -> list[QualityScore]:
        import ray

        from actors.core.clip_scorer import ScoreItem

        if not images:
            return []
        if not self._ready():
            return self._fallback.score(images)
        # CLIP reads English: a prompt in another language is scored against its English text
        items = [ScoreItem(i.png, i.task.english_prompt or i.task.prompt, i.task.width, i.task.height,
                           i.nonfinite_fraction) for i in images]
        try:
            return ray.get(self.actor.score.remote(items), timeout=self.load_timeout)
        except Exception as exc:  # noqa: BLE001 - a scorer lost mid-run must not cost the run its images
            self._give_up(f"CLIP scorer {self.spec.id!r} failed while scoring: {describe_exception(exc)}")
            return self._fallback.score(images)

    def describe(self) -> dict:
        """What scored (waits, bounded, for the scorer to finish loading)."""
        if not self._ready():
            return self._fallback.describe()
        return dict(self._info)

    def release(self) -> None:
        import ray

        if self.owned and self.actor is not None:
            try:
                ray.kill(self.actor)
            except Exception:  # noqa: BLE001 - already gone with the cluster
                pass


def make_scorer(name: str | None, config: ScoringConfig, nodes: list[NodeCapacity], events: Events | None = None,
                resident: bool = False, limits: Limits | None = None, start: bool = True) -> Scorer:
    """The scorer a run uses: `name` (or the config's default), or weight-free with the reason.
    `resident`: the warm cluster's scorer, shared with other runs and left running. `start=False`:
    created and loaded only when the run calls `start()` (or first scores)."""
    name = name or config.default
    if name == NO_SCORER:
        return WeightFreeScorer("scoring without a CLIP model (--scorer none)")
    spec = config.get(name)
    missing = spec.missing_weights()
    if missing:
        return WeightFreeScorer(missing)
    options = ActorScorer.actor_options(spec, nodes)
    unplaceable = _unplaceable(spec, options, nodes)
    if unplaceable:
        return WeightFreeScorer(unplaceable)
    limits = limits or Limits()
    waits = {"placement_timeout": limits.scheduler.placement_timeout,
             "load_timeout": limits.scheduler.model_load_timeout}
    if resident:
        import ray

        from cluster.engine.resident import REGISTRY_TIMEOUT, actor_handle, registry_actor

        try:
            name = ray.get(registry_actor().ensure_scorer.remote(spec, options, str(env.cache_dir())),
                           timeout=REGISTRY_TIMEOUT)
            actor = actor_handle(name)
        except Exception as exc:  # noqa: BLE001 - no warm scorer: the images still get weight-free scores
            return WeightFreeScorer(f"the warm cluster could not provide scorer {spec.id!r}: {describe_exception(exc)}")
        return ActorScorer(spec, nodes, events, actor=actor, **waits)
    return ActorScorer(spec, nodes, events, start=start, **waits)


def _unplaceable(spec: ScorerSpec, options: dict, nodes: list[NodeCapacity]) -> str | None:
    """Why no node of the cluster could ever hold the scorer, or None."""
    share = options.get("num_gpus", 0)
    if not share:
        return None
    if any(n.gpus >= share and (n.card_gb is None or n.card_gb >= spec.gpu_memory_gb) and n.cpus >= spec.cpus
           for n in nodes):
        return None
    return (f"CLIP scorer {spec.id!r} needs {share:g} GPU and {spec.gpu_memory_gb:g} GB GPU memory on one node, "
            f"and no node has that (cluster: {describe(nodes)})")
