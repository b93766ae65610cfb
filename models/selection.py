"""`--models auto` and the smart strategy: which models make a request's images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from models.prompt_analysis import PromptAnalysis
from models.registry import ModelSpec, Registry

# A model's past record, from the run history: higher is better, None when unknown.
HistoryScore = Callable[[str], "float | None"]


@dataclass(frozen=True)
class Selection:
    models: tuple[str, ...]
    reason: str


def select_models(
    analysis: PromptAnalysis,
    registry: Registry,
    available: Sequence[ModelSpec],
    count: int,
    history: HistoryScore | None = None,
) -> Selection:
    """Pick up to `count` models among `available` (assumed non-empty and auto-selectable).

    The design card's rule first (realism -> imagen4-ultra/photo-flux, artistic ->
    flux-schnell/imagen4-fast, otherwise imagen4-fast), restricted to available models; then
    available models whose strengths name the category; then the rest by quality and speed.
    Within each group, a better history record goes first.
    """
    category = analysis.category
    by_id = {spec.id: spec for spec in available}
    rule = [m for m in registry.smart_selection.get(category, ()) if m in by_id]

    def rank(spec: ModelSpec) -> tuple:
        past = history(spec.id) if history else None
        return (-(past if past is not None else -1.0), -(category in spec.strengths), -spec.quality, -spec.speed, spec.id)

    if history:
        rule.sort(key=lambda m: rank(by_id[m])[0])
    rest = sorted((s for s in available if s.id not in rule), key=rank)
    ordered = rule + [s.id for s in rest]
    chosen = tuple(rule[: max(1, count)]) if rule else tuple(ordered[:1])
    if rule:
        reason = f"prompt reads as {category}; the smart rule picks {', '.join(rule)} among available models"
    else:
        reason = (
            f"prompt reads as {category}; none of the rule's models ({', '.join(registry.smart_selection.get(category, ())) or 'none'})"
            f" is available, so the best available model {chosen[0]} is used"
        )
    return Selection(chosen, reason)


def distribute(count: int, models: Sequence[str]) -> list[str]:
    """`count` images over `models`, round robin: 3 over [a, b] -> [a, b, a]."""
    return [models[i % len(models)] for i in range(count)]
