"""What happens to an image whose attempt failed: the design card's error table as rules.

| code            | response                                          |
|-----------------|---------------------------------------------------|
| IMG_006 rate    | same model again after exponential backoff+jitter |
| IMG_008 network | same model again, with a shorter request timeout  |
| replica died    | same model again (restarted, or another replica)  |
| IMG_007 auth    | the run stops: no fallback                        |
| IMG_005 disk    | the run stops                                     |
| IMG_023 filtered| the image fails with the filter's reason          |
| anything else   | the fastest available model not yet tried; with none left, the same model once more for IMG_020 |

After a network error (IMG_008) an image is sent alone, one image per request, with a
shorter request timeout (the design card's "retry with shorter timeout, then one image").

Every rule stops at `max_attempts` tries per image.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cluster.planning.limits import SchedulerLimits
from cluster.work import Attempt, ImageTask

ABORT_CODES = {"IMG_007", "IMG_005"}
SAME_MODEL_CODES = {"IMG_006", "IMG_008"}
# The content itself was refused by the model's safety system: another model is no way around it.
FINAL_CODES = {"IMG_023"}


@dataclass
class TaskState:
    task: ImageTask
    attempts: list[Attempt] = field(default_factory=list)
    not_before: float = 0.0
    priority: int = 0  # lower runs first; retries jump the queue so late images do not starve

    @property
    def network_failures(self) -> int:
        return sum(1 for a in self.attempts if a.code == "IMG_008")

    @property
    def solo(self) -> bool:
        """Sent alone after a network error: a smaller request is likelier to get through."""
        return self.network_failures > 0

    @property
    def tried_models(self) -> set[str]:
        return {a.model for a in self.attempts}


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "fallback", "fail", "abort"]
    model: str | None = None
    delay: float = 0.0


class RetryPolicy:
    def __init__(self, limits: SchedulerLimits, fallback_order: Sequence[str], rng: random.Random | None = None):
        """`fallback_order`: available models, fastest first (the design card's fallback rule)."""
        self.limits = limits
        self.fallback_order = list(fallback_order)
        self.rng = rng or random.Random()

    def backoff(self, failures: int) -> float:
        base = min(self.limits.backoff_max, self.limits.backoff_base * (2 ** max(0, failures - 1)))
        return base * (0.5 + self.rng.random() / 2)  # "equal jitter": never zero, never above the cap

    def decide(self, state: TaskState, code: str, usable: Callable[[str], bool], replica_died: bool = False) -> Decision:
        if code in ABORT_CODES:
            return Decision("abort")
        if code in FINAL_CODES:
            return Decision("fail")
        if len(state.attempts) >= self.limits.max_attempts:
            return Decision("fail")
        model = state.task.model
        if (replica_died or code in SAME_MODEL_CODES) and usable(model):
            same_code_failures = sum(1 for a in state.attempts if a.code == code)
            delay = self.backoff(same_code_failures) if code == "IMG_006" else 0.0
            return Decision("retry", model, delay)
        for candidate in self.fallback_order:
            if candidate not in state.tried_models and usable(candidate):
                return Decision("fallback", candidate)
        if code == "IMG_020" and usable(model):  # no alternative: a pipeline error may be transient
            return Decision("retry", model)
        return Decision("fail")
