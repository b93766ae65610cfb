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
from cluster.events import Events
from cluster.placement import GPU_MEMORY_RESOURCE, NodeCapacity, smallest_card_gb, uses_gpus
from cluster.png import decode
from cluster.quality import QualityScore, weight_free_score
from cluster.work import GeneratedImage
from models.scorers import NO_SCORER, ScorerSpec, ScoringConfig


class Scorer(Protocol):
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

    def describe(self) -> dict:
        return {"name": "weight-free", "weights": "none", "note": self.reason}

    def release(self) -> None:
        pass


class ActorScorer:
    """Scores through the CLIP scorer actor; loads in the background from construction on."""

    def __init__(self, spec: ScorerSpec, nodes: list[NodeCapacity], events: Events | None = None, actor=None):
        from actors.scorer_actor import ScorerActor

        self.spec = spec
        self.events = events or Events()
        self.owned = actor is None
        self.actor = actor or ScorerActor.options(**self.actor_options(spec, nodes)).remote(spec, str(env.cache_dir()))
        self._load_ref = self.actor.load.remote()
        self._info: dict | None = None
        self._fallback: WeightFreeScorer | None = None

    @staticmethod
    def actor_options(spec: ScorerSpec, nodes: list[NodeCapacity]) -> dict:
        options: dict = {"num_cpus": spec.cpus, "max_restarts": 1, "max_concurrency": 2}
        if uses_gpus(nodes):
            card = smallest_card_gb(nodes)
            fraction = spec.gpus if not card else min(1.0, max(spec.gpus, spec.gpu_memory_gb / card))
            options["num_gpus"] = round(fraction, 4)
            if card:
                options["resources"] = {GPU_MEMORY_RESOURCE: spec.gpu_memory_gb}
        return options

    def _ready(self) -> bool:
        import ray

        if self._info is None and self._fallback is None:
            try:
                self._info = ray.get(self._load_ref)
                self.events.emit("scorer_loaded", scorer=self.spec.id, seconds=self._info.get("load_seconds"),
                                 device=self._info.get("device"))
            except Exception as exc:  # noqa: BLE001 - a scorer that cannot load leaves weight-free scores
                reason = f"CLIP scorer {self.spec.id!r} failed to load: {' '.join(str(exc).split())[:300]}"
                self._fallback = WeightFreeScorer(reason)
                self.events.emit("scorer_failed", scorer=self.spec.id, message=reason)
        return self._fallback is None

    def score(self, images: list[GeneratedImage]) -> list[QualityScore]:
        import ray

        from actors.clip_scorer import ScoreItem

        if not images:
            return []
        if not self._ready():
            return self._fallback.score(images)
        items = [ScoreItem(i.png, i.task.prompt, i.task.width, i.task.height, i.nonfinite_fraction) for i in images]
        try:
            return ray.get(self.actor.score.remote(items))
        except Exception as exc:  # noqa: BLE001 - a scorer lost mid-run must not cost the run its images
            reason = f"CLIP scorer {self.spec.id!r} failed while scoring: {describe_exception(exc)}"
            self._fallback = WeightFreeScorer(reason)
            self.events.emit("scorer_failed", scorer=self.spec.id, message=reason)
            return self._fallback.score(images)

    def describe(self) -> dict:
        """What scored (waits for the scorer to finish loading)."""
        if not self._ready():
            return self._fallback.describe()
        return dict(self._info)

    def release(self) -> None:
        import ray

        if self.owned:
            try:
                ray.kill(self.actor)
            except Exception:  # noqa: BLE001 - already gone with the cluster
                pass


def make_scorer(name: str | None, config: ScoringConfig, nodes: list[NodeCapacity], events: Events | None = None,
                resident: bool = False) -> Scorer:
    """The scorer a run uses: `name` (or the config's default), or weight-free with the reason.
    `resident`: the warm cluster's scorer, shared with other runs and left running."""
    name = name or config.default
    if name == NO_SCORER:
        return WeightFreeScorer("scoring without a CLIP model (--scorer none)")
    spec = config.get(name)
    missing = spec.missing_weights()
    if missing:
        return WeightFreeScorer(missing)
    if resident:
        import ray

        from cluster.resident import actor_handle, registry_actor

        name = ray.get(registry_actor().ensure_scorer.remote(spec, ActorScorer.actor_options(spec, nodes),
                                                             str(env.cache_dir())))
        return ActorScorer(spec, nodes, events, actor=actor_handle(name))
    return ActorScorer(spec, nodes, events)
