"""The Ray actor around `ClipScorer`: constructed cheaply, loaded by `load()` so load errors
reach the driver as themselves."""

from __future__ import annotations

import threading
from pathlib import Path

import ray

from actors.core.clip_scorer import ClipScorer, ScoreItem
from cluster.quality.score import QualityScore
from models.scorers import ScorerSpec


class ScorerWorker:
    def __init__(self, spec: ScorerSpec, cache_root: str):
        self.spec = spec
        self.cache_root = Path(cache_root)
        self.scorer: ClipScorer | None = None
        self._lock = threading.Lock()

    def load(self) -> dict:
        with self._lock:
            if self.scorer is None:
                self.scorer = ClipScorer(self.spec, self.cache_root)
        return {**self.scorer.describe(), "load_seconds": round(self.scorer.load_seconds, 3)}

    def score(self, items: list[ScoreItem]) -> list[QualityScore]:
        if self.scorer is None:
            self.load()
        return self.scorer.score(items)

    def stats(self) -> dict:
        scorer = self.scorer
        return {"text_encodes": scorer.text_encodes if scorer else 0,
                "cached_prompts": len(scorer._text_cache) if scorer else 0}


ScorerActor = ray.remote(ScorerWorker)
