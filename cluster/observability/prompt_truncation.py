"""What each model's text encoders cut of the prompt, per image and per model, once the images
are made: a replica counted it with its own tokenizers; for an image its backend did not count
(remote models) it is estimated here from the prompt's length (the driver loads no tokenizer).
One `prompt_truncated` event per model that cut; the run's summary makes one line of them."""

from __future__ import annotations

from cluster.observability.events import Events
from models.prompt_length import describe, truncations
from models.registry import Registry


def record_truncations(images: list, registry: Registry, events: Events) -> dict[str, list[dict]]:
    """Fill in each image's `prompt_truncation` where its backend did not, and return per model
    what its encoders cut (of its images' longest prompt) for the models that cut anything."""
    by_model: dict[str, dict[str, dict]] = {}
    for final in images:
        image, task = final.image, final.image.task
        if image.prompt_truncation is None and task.model in registry:
            image.prompt_truncation = truncations(registry.get(task.model).prompt_encoders, task.prompt)
        for cut in image.prompt_truncation or []:
            seen = by_model.setdefault(task.model, {})
            if cut["encoder"] not in seen or cut["tokens"] > seen[cut["encoder"]]["tokens"]:
                seen[cut["encoder"]] = cut
    cuts = {model: list(encoders.values()) for model, encoders in by_model.items()}
    for model, model_cuts in cuts.items():
        events.emit("prompt_truncated", model=model, message=describe(model, model_cuts))
    return cuts


def summary_line(cuts: dict[str, list[dict]]) -> str | None:
    """`prompt cut: flux-schnell reads 77 of 143 tokens (CLIP-L) and 256 of 301 (T5-XXL); ...`"""
    if not cuts:
        return None
    return ("prompt cut: " + "; ".join(describe(model, model_cuts) for model, model_cuts in cuts.items())
            + " (the rest of the prompt is not seen; see prompt_truncation in the report)")
