"""How many replicas a model's images go to: the count whose makespan is shortest. Pure.

A replica's memory plan may hold a batch of several images per call, and replicas on other
cards could run the same images side by side. On a GPU a call's time grows with its batch (a
diffusion step is compute-bound), so four images on four idle cards take about a quarter of what
one batch of four takes on one card; but a new replica first loads its weights, and a warm one
does not. So, for each possible count r:

    makespan(r) = load(r) + rounds(r) x call(batch(r))

where load(r) is 0 while the warm replicas suffice and the load time otherwise (new replicas
load side by side), batch(r) spreads the images evenly (at most the plan's batch), rounds(r) is
how many calls each replica makes, and a call costs `call_s + per_image_s x batch`. The
shortest makespan wins, the fewest replicas among equals (they leave cards to others). Unknown
timings count as what a GPU does: per image, nothing fixed per call, no load time beyond the
warm replicas' (a fresh run loads every replica anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """What a replica costs, in seconds, when known (history, or the plan)."""

    load_s: float | None = None  # loading a new replica
    per_image_s: float | None = None  # each image of a call
    call_s: float = 0.0  # each call, whatever its batch


@dataclass(frozen=True)
class SpreadChoice:
    replicas: int
    batch: int
    makespan_s: float | None  # None when the timings were unknown (then in units of one image)
    reason: str


def makespan(images: int, replicas: int, plan_batch: int, warm: int, timing: Timing) -> tuple[float, int]:
    """(makespan, batch) of `images` on `replicas`; in units of one image's time when unknown."""
    batch = max(1, min(plan_batch, math.ceil(images / replicas)))
    rounds = math.ceil(math.ceil(images / batch) / replicas)
    per_image = timing.per_image_s if timing.per_image_s is not None else 1.0
    load = (timing.load_s or 0.0) if replicas > warm else 0.0
    return load + rounds * (timing.call_s + per_image * batch), batch


def choose_replicas(images: int, plan_batch: int, capacity: int, warm: int = 0, timing: Timing = Timing()
                    ) -> SpreadChoice:
    """The replica count (1..`capacity`) and batch whose makespan is shortest; `warm`: replicas
    already loaded."""
    capacity = max(1, min(capacity, images))
    options = [(makespan(images, r, plan_batch, warm, timing), r) for r in range(1, capacity + 1)]
    (best, batch), replicas = min(options, key=lambda o: (round(o[0][0], 6), o[1]))
    known = timing.per_image_s is not None
    (one_replica, one_batch), _ = options[0]
    unit = "s" if known else " image-times"
    if replicas == 1 and capacity > 1:
        why = (f"batching {images} image(s) {one_batch} per call on 1 replica finishes first "
               f"({one_replica:.3g}{unit}; spreading over {capacity} costs "
               f"{options[-1][0][0]:.3g}{unit}{' with loading' if timing.load_s else ''})")
    elif replicas > 1:
        why = (f"spreading {images} image(s) over {replicas} replicas ({batch} per call) finishes first: "
               f"{best:.3g}{unit} against {one_replica:.3g}{unit} batched on 1"
               + (f" (the {warm} warm replica(s) and loading more)" if warm and replicas > warm else ""))
    else:
        why = f"{images} image(s) need no more than 1 replica" if images <= 1 else \
            f"only 1 replica can be placed: {images} image(s), {one_batch} per call"
    return SpreadChoice(replicas, batch, round(best, 3) if known else None, why)
