"""The scoring stage: every finished image gets a `QualityScore` before anything is written."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from cluster.png import decode
from cluster.quality import QualityScore, weight_free_score
from cluster.work import GeneratedImage


class Scorer(Protocol):
    def score(self, images: list[GeneratedImage]) -> list[QualityScore]: ...

    def describe(self) -> dict: ...


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
