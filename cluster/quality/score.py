"""The design card's Quality Assessment Framework: four scores, one overall, a tier.

overall = 0.3·technical + 0.4·alignment + 0.2·aesthetic + 0.1·(1 − artifacts)

A score whose model is not there (no CLIP scorer, no aesthetic weights) is reported as
unavailable with its reason, and the remaining weights are renormalised: never a
made-up number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WEIGHTS = {
    "technical_quality": 0.3,
    "prompt_alignment": 0.4,
    "aesthetic_appeal": 0.2,
    "generation_artifacts": 0.1,  # enters as (1 - artifacts)
}
# CLIPScore (Hessel et al., 2021): w * max(cos(image, text), 0) with w = 2.5.
CLIPSCORE_W = 2.5
# Tier boundaries on the overall score.
TIERS = ((0.85, "excellent"), (0.70, "good"), (0.50, "acceptable"), (0.30, "poor"), (0.0, "unusable"))


@dataclass
class QualityScore:
    overall: float
    tier: str
    detailed: dict[str, float | None]
    unavailable: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)
    scorer: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "overall_score": round(self.overall, 4),
            "quality_tier": self.tier,
            "detailed_scores": {k: (None if v is None else round(v, 4)) for k, v in self.detailed.items()},
            "unavailable_scores": dict(self.unavailable),
            "weights_used": effective_weights(self.detailed),
            "details": self.details,
            "scorer": self.scorer,
        }


def clip_score(cosine: float, w: float = CLIPSCORE_W) -> float:
    return w * max(float(cosine), 0.0)


def alignment_from_clipscore(score: float, cos_low: float, cos_high: float, w: float = CLIPSCORE_W) -> float:
    """Calibration: CLIPScore is mapped linearly so that w*cos_low (what unrelated image/prompt
    pairs reach on the scorer's model) is 0 and w*cos_high (a good match) is 1, clipped."""
    low, high = w * cos_low, w * cos_high
    return min(1.0, max(0.0, (score - low) / (high - low)))


def aesthetic_from_predictor(rating: float) -> float:
    """The LAION aesthetic predictor rates 1..10; 1 -> 0 and 10 -> 1, clipped."""
    return min(1.0, max(0.0, (float(rating) - 1.0) / 9.0))


def effective_weights(detailed: dict[str, float | None]) -> dict[str, float]:
    present = {k: w for k, w in WEIGHTS.items() if detailed.get(k) is not None}
    total = sum(present.values())
    return {k: round(w / total, 4) for k, w in present.items()} if total else {}


def overall_score(detailed: dict[str, float | None]) -> float:
    """The weighted sum over the scores that exist, weights renormalised to 1."""
    weights = {k: w for k, w in WEIGHTS.items() if detailed.get(k) is not None}
    total = sum(weights.values())
    if not total:
        return 0.0
    value = 0.0
    for key, weight in weights.items():
        score = float(detailed[key])  # type: ignore[arg-type]
        value += weight * ((1.0 - score) if key == "generation_artifacts" else score)
    return min(1.0, max(0.0, value / total))


def quality_tier(overall: float) -> str:
    # The tier of the score as reported (4 decimals): renormalised weights leave float error, and an
    # overall of 0.6999999999999998 shown as 0.7 must not be "acceptable" beside it.
    reported = round(float(overall), 4)
    for bound, name in TIERS:
        if reported >= bound:
            return name
    return TIERS[-1][1]


def make_score(detailed: dict[str, float | None], unavailable: dict[str, str], details: dict | None = None,
               scorer: dict | None = None) -> QualityScore:
    overall = overall_score(detailed)
    return QualityScore(overall, quality_tier(overall), detailed, unavailable, details or {}, scorer or {})


def weight_free_score(rgb, requested: tuple[int, int], nonfinite_fraction: float = 0.0,
                      unavailable_reason: str = "no CLIP scorer in this run") -> QualityScore:
    """Technical quality and artifacts only (numpy); alignment and aesthetics unavailable."""
    from cluster.quality.image_metrics import generation_artifacts, technical_quality

    tech = technical_quality(rgb, requested)
    art = generation_artifacts(rgb, nonfinite_fraction)
    detailed = {
        "technical_quality": tech.technical_quality,
        "prompt_alignment": None,
        "aesthetic_appeal": None,
        "generation_artifacts": art.generation_artifacts,
    }
    unavailable = {"prompt_alignment": unavailable_reason, "aesthetic_appeal": unavailable_reason}
    return make_score(detailed, unavailable, {"technical": tech.as_dict(), "artifacts": art.as_dict()},
                      {"name": "weight-free", "weights": "none"})
