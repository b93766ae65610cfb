"""What a run's images cost, and what they would have cost elsewhere. Pure arithmetic.

A local image: (its share of its pipeline call's seconds + its share of its replica's load time)
x the fraction of the card its replica holds x the card's price per hour / 3600. A warm replica's
load was paid by an earlier run: it adds nothing; LoRA adapters its call loaded count as loading. A remote image: its model's list price.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cluster.planning.costs.config import CostConfig
from cluster.planning.costs.money import format_usd


@dataclass(frozen=True)
class ImageCost:
    index: int
    model: str
    usd: float
    basis: str
    seconds: float | None = None  # GPU- or CPU-seconds counted (local images)

    def as_dict(self) -> dict:
        out = {"index": self.index, "model": self.model, "usd": round(self.usd, 6), "basis": self.basis}
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 3)
        return out


def image_costs(images, replicas: dict, specs: dict, config: CostConfig) -> list[ImageCost]:
    """`images`: GeneratedImages; `replicas`: model -> ReplicaInfos of this run; `specs`: model -> ModelSpec."""
    infos = {(info.model, info.replica): info for infos in replicas.values() for info in infos}
    made = Counter((image.task.model, image.replica) for image in images)
    costs = []
    for image in images:
        model = image.task.model
        spec = specs.get(model)
        if spec is None or not spec.is_local:
            price = config.list_price(model, spec.cost_per_image_usd if spec is not None else 0.0)
            costs.append(ImageCost(image.task.index, model, price, f"list price {format_usd(price)}/image"))
            continue
        info = infos.get((model, image.replica))
        card = getattr(info, "card", "") or "cpu"
        rate, what = config.hour_rate(card)
        # a card's fraction prices GPU time; a replica running on the CPU (a logical GPU, tests) pays its CPU-seconds
        share = (getattr(info, "gpu_share", 0.0) or 1.0) if what != "CPU" else 1.0
        load = (info.load_seconds / made[(model, image.replica)]) if info is not None and not info.warm else 0.0
        load += image.extra.get("adapter_load_seconds", 0.0)  # its share of loading its call's adapters
        seconds = image.seconds + load
        unit = "CPU-s" if what == "CPU" else "GPU-s"
        fraction = f"{share:g} of " if share != 1.0 else ""
        basis = (f"{seconds:.2f} {unit} ({image.seconds:.2f} generating + {load:.2f} loading) x {fraction}"
                 f"{'a ' + what if what != 'CPU' else 'the CPU'} at ${rate:g}/h")
        costs.append(ImageCost(image.task.index, model, seconds * share * rate / 3600, basis, seconds))
    return costs


def cost_section(costs: list[ImageCost], alternatives: dict[str, float], images: int) -> dict:
    """The report's `cost`: per image, per model and per run, and the same images on each remote model."""
    per_model: dict[str, dict] = {}
    for cost in costs:
        row = per_model.setdefault(cost.model, {"images": 0, "usd": 0.0})
        row["images"] += 1
        row["usd"] += cost.usd
    for model, row in per_model.items():
        row["usd"] = round(row["usd"], 6)
        row["usd_per_image"] = round(row["usd"] / row["images"], 6)
        first = next(c for c in costs if c.model == model)
        row["basis"] = ("list price" if first.seconds is None else
                        "CPU-seconds x hourly rate" if "CPU-s" in first.basis else
                        "GPU-seconds x card fraction x hourly rate")
    total = round(sum(c.usd for c in costs), 6)
    return {
        "total_usd": total,
        "per_model": per_model,
        "per_image": [c.as_dict() for c in costs],
        "same_images_on": {model: round(price * images, 6) for model, price in alternatives.items()},
    }


def remote_alternatives(specs, config: CostConfig) -> dict[str, float]:
    """List price per image of every remote model (what the run's images would cost there)."""
    return {s.id: config.list_price(s.id, s.cost_per_image_usd) for s in specs if not s.is_local}
