"""Budgets: a plan priced before it runs, degraded or refused when over, and spending held while
it runs. Pure: the scheduler asks `BudgetTracker` before each call.

Estimates per image: a remote model's list price; a local model's cost per image over its recent
runs on this cluster (run history: GPU time and load shares, as priced after each run), else the
defaults of configs/costs.yaml (seconds per image, a cold load, the default card price).
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.planning.costs.config import CostConfig
from cluster.errors import ImageGenError
from cluster.planning.costs.money import format_usd


@dataclass(frozen=True)
class Estimate:
    model: str
    images: int
    usd_per_image: float
    seconds_per_image: float | None
    basis: str

    @property
    def usd(self) -> float:
        return self.usd_per_image * self.images

    def as_dict(self) -> dict:
        return {"model": self.model, "images": self.images, "usd": round(self.usd, 6),
                "usd_per_image": round(self.usd_per_image, 6), "seconds_per_image": self.seconds_per_image,
                "basis": self.basis}


def estimate(counts: dict[str, int], specs: dict, history: dict, config: CostConfig,
             on_cpu: bool = False) -> dict[str, Estimate]:
    """`counts`: images per model (a local model's load is shared by its images); `history`:
    cluster.observability.history.History.summary(); `on_cpu`: local models run on CPUs (priced at the CPU rate)."""
    out = {}
    for model, images in counts.items():
        spec = specs[model]
        if not spec.is_local:
            price = config.list_price(model, spec.cost_per_image_usd)
            out[model] = Estimate(model, images, price, None, f"list price {format_usd(price)}/image")
            continue
        past = history.get(model) or history.get(f"{model} ({spec.weights} weights)")
        if past and past.get("images") and past.get("cost_usd"):
            per_image = past["cost_usd"] / past["images"]
            out[model] = Estimate(model, images, per_image, past.get("seconds_per_image"),
                                  f"history: {past['runs']} run(s), {past['images']} image(s) on this cluster")
            continue
        rate, where = (config.cpu_hour_usd, "CPU") if on_cpu else (config.default_gpu_hour_usd, "GPU")
        seconds = config.default_seconds_per_image + config.default_load_seconds / max(1, images)
        out[model] = Estimate(model, images, seconds * rate / 3600, config.default_seconds_per_image,
                              f"defaults (no history): {config.default_seconds_per_image:g} s/image, "
                              f"{config.default_load_seconds:g} s load, ${rate:g}/h ({where})")
    return out


def fit(tasks: list, estimates: dict[str, Estimate], budget: float, policy: str, retarget) -> tuple[list, dict | None]:
    """The tasks within `budget`: unchanged when they fit; else, with `policy` "refuse", IMG_029; with
    "degrade", images moved to the cheapest model of the plan, then dropped, until they fit. Returns
    (tasks, the degradation to record). `retarget(task, model)` re-plans a task for another model."""
    per_image = {m: e.usd_per_image for m, e in estimates.items()}
    total = sum(per_image[t.model] for t in tasks)
    if total <= budget:
        return tasks, None
    basis = "; ".join(f"{m}: {e.images} x {format_usd(e.usd_per_image)} ({e.basis})" for m, e in estimates.items())
    if policy == "refuse":
        raise ImageGenError("IMG_029", f"the plan is estimated at {format_usd(total)}, over --budget-usd {format_usd(budget)} "
                                       f"({basis}); ask for fewer images or cheaper models, or use "
                                       "--budget-policy degrade.")
    cheapest = min(per_image, key=per_image.get)
    kept = list(tasks)
    moved = dropped = 0
    for task in sorted(tasks, key=lambda t: (-per_image[t.model], -t.index)):
        if total <= budget:
            break
        position = kept.index(task)
        if task.model != cheapest and per_image[cheapest] < per_image[task.model]:
            kept[position] = retarget(task, cheapest)
            total += per_image[cheapest] - per_image[task.model]
            moved += 1
        else:
            kept.pop(position)
            total -= per_image[task.model]
            dropped += 1
    while total > budget and kept:  # still over: fewer images
        task = kept.pop()
        total -= per_image[task.model]
        dropped += 1
    if not kept:
        raise ImageGenError("IMG_029", f"even one image is estimated above --budget-usd {format_usd(budget)} ({basis}).")
    return kept, {"strategy": "budget", "trigger": "estimated cost over --budget-usd", "budget_usd": budget,
                  "images_moved_to": cheapest if moved else None, "images_moved": moved,
                  "images_dropped": dropped, "estimated_usd": round(total, 6), "code": "IMG_029"}


class BudgetTracker:
    """Spending of a run, held by the scheduler: no call starts that would cross the budget. It
    prices each image exactly as the plan was priced (the per-image estimates `fit` accepted, a
    load shared by the plan's images), so it never refuses an image the plan's estimate accepted."""

    def __init__(self, budget: float, estimates: dict[str, Estimate]):
        self.budget = budget
        self.estimates = dict(estimates)  # what the report shows: the plan's models as priced
        self.per_image = {m: e.usd_per_image for m, e in estimates.items()}
        self.spent = 0.0
        self.reserved = 0.0

    def price(self, model: str) -> float:
        return self.per_image.get(model, 0.0)

    def affordable(self, model: str, images: int) -> int:
        """How many of `images` of `model` may start now (0: none)."""
        price = self.price(model)
        if price <= 0:
            return images
        room = self.budget - self.spent - self.reserved
        return max(0, min(images, int(room / price + 1e-9)))

    def start(self, model: str, images: int) -> None:
        self.reserved += self.price(model) * images

    def finish(self, model: str, started: int, made: int) -> None:
        self.reserved = max(0.0, self.reserved - self.price(model) * started)
        self.spent += self.price(model) * made
