"""The run's record: generation-report.json (the design card's schema, extended),
quality-analysis.json and model-comparison.md, built from one `RunOutcome`.

Images in the report are the images that exist, numbered in output order: entry `index`
i is file `generated-image-{i+1}.png` and element i of image-urls.json; where it sat in
the plan is `planned_index`. Failed images are listed apart, with their attempts.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import ImageGenError
from cluster.output.money import format_usd
from cluster.quality.score import QualityScore
from cluster.planning.request import GenerationRequest
from cluster.work import Attempt, FailedImage, GeneratedImage, ReplicaInfo

SCHEMA_VERSION = "2.0"


@dataclass
class FinalImage:
    position: int
    image: GeneratedImage
    quality: QualityScore
    url: str
    below_threshold: bool = False

    @property
    def filename(self) -> str:
        return f"generated-image-{self.position + 1}.png"

    @property
    def model(self) -> str:
        return self.image.task.model


@dataclass
class RunOutcome:
    request: GenerationRequest
    plan_models: list[str]
    selection_reason: str
    prompt_analysis: dict
    base_seed: int
    planned_total: int
    images: list[FinalImage]
    failures: list[FailedImage]
    primary: int | None
    total_seconds: float
    started_at: str
    replicas: dict[str, list[ReplicaInfo]] = field(default_factory=dict)
    degradations: list[dict] = field(default_factory=list)
    quality_relaxed: bool = False
    effective_threshold: float | None = None
    scorer: dict = field(default_factory=dict)
    error: ImageGenError | None = None
    stopped: str | None = None
    cluster: dict = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    folder_display: str = ""
    model_weights: dict[str, str] = field(default_factory=dict)  # "real"/"random" of every model the run could use
    primary_url: str | None = None  # set when the primary copy was uploaded
    upload: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)  # per-model summary of earlier runs (cluster.observability.history)
    resumed: dict | None = None  # what an interrupted earlier run of this request left and this one kept
    cost: dict = field(default_factory=dict)  # cluster.planning.costs.pricing.cost_section: per image, model and run
    translation: dict | None = None  # the prompt's language and its translation (cluster.engine.translation)
    prompt_truncation: dict[str, list[dict]] = field(default_factory=dict)  # per model, what its encoders cut

    @property
    def completed(self) -> bool:
        return bool(self.images)

    @property
    def status(self) -> str:
        if not self.images:
            return "failed"
        if self.failures or self.stopped or self.error:
            return "partial"
        return "completed"

    @property
    def primary_image(self) -> FinalImage | None:
        return self.images[self.primary] if self.primary is not None else None


def _attempts(attempts: list[Attempt]) -> list[dict]:
    return [
        {"model": a.model, "replica": a.replica, "error_code": a.code, "message": a.message or None,
         "duration_seconds": round(a.seconds, 3)}
        for a in attempts
    ]


def image_entry(final: FinalImage, file_size: int) -> dict[str, Any]:
    image, task = final.image, final.image.task
    return {
        "index": final.position,
        "filename": final.filename,
        "model_used": task.model,
        "generation_time_seconds": round(image.seconds, 3),
        "google_url": final.url,
        "quality_score": round(final.quality.overall, 4),
        "file_size_bytes": file_size,
        "resolution": f"{image.width}x{image.height}",
        "prompt_variation": task.prompt_variation,
        # extensions
        "planned_index": task.index,
        "prompt": task.prompt,
        **({"original_prompt": task.original_prompt or task.prompt, "prompt_language": task.language,
            "prompt_received": task.prompt, "translator": task.translator or None} if task.language else {}),
        **({"prompt_truncated": image.prompt_truncation} if image.prompt_truncation else {}),
        "seed": task.seed,
        "steps": task.steps,
        "guidance": task.guidance,
        "quality_tier": final.quality.tier,
        "below_threshold": final.below_threshold,
        "weights": image.weights,
        "replica": image.replica,
        "backend": image.extra or None,
        "attempts": _attempts(image.attempts),
    }


def model_comparison(outcome: RunOutcome) -> dict[str, Any]:
    tested = list(dict.fromkeys(
        [*outcome.plan_models]
        + [a.model for f in outcome.images for a in f.image.attempts]
        + [a.model for f in outcome.failures for a in f.attempts]
    ))
    per_model: dict[str, dict] = {}
    for model in tested:
        finals = [f for f in outcome.images if f.model == model]
        failed = [f for f in outcome.failures if f.task.model == model]
        scores = [f.quality.overall for f in finals]
        seconds = [f.image.seconds for f in finals]
        attempts = [a for f in outcome.images for a in f.image.attempts if a.model == model] + [
            a for f in outcome.failures for a in f.attempts if a.model == model
        ]
        per_model[model] = {
            "images": len(finals),
            "failed": len(failed),
            "attempts": len(attempts),
            "success_rate": round(sum(1 for a in attempts if a.code is None) / len(attempts), 4) if attempts else None,
            "mean_quality": round(statistics.fmean(scores), 4) if scores else None,
            "quality_spread": round(statistics.pstdev(scores), 4) if len(scores) > 1 else (0.0 if scores else None),
            "mean_seconds_per_image": round(statistics.fmean(seconds), 3) if seconds else None,
            "cost_usd": round(outcome.costs.get(model, 0.0), 6),
            "cost_per_image_usd": round(outcome.costs.get(model, 0.0) / len(finals), 6) if finals else None,
            # quality points per dollar: which model gives most for the money (None: it cost nothing)
            "quality_per_usd": round(statistics.fmean(scores) / (outcome.costs[model] / len(finals)), 2)
            if scores and outcome.costs.get(model) else None,
        }
    with_images = {m: v for m, v in per_model.items() if v["images"]}

    def best(key, reverse=False, pool=None):
        pool = pool if pool is not None else with_images
        if not pool:
            return None
        return sorted(pool, key=lambda m: ((-1 if reverse else 1) * pool[m][key], m))[0]

    several = {m: v for m, v in with_images.items() if v["images"] > 1}
    return {
        "models_tested": tested,
        "best_quality_model": best("mean_quality", reverse=True),
        "fastest_model": best("mean_seconds_per_image"),
        # spread is only meaningful with two or more images; fall back to all models otherwise
        "most_consistent_model": best("quality_spread", pool=several or with_images),
        "per_model": per_model,
    }


def generation_report(outcome: RunOutcome, file_sizes: dict[int, int], report_path: str) -> dict[str, Any]:
    req = outcome.request
    times = [f.image.seconds for f in outcome.images]
    weights = sorted({f.image.weights for f in outcome.images}) or sorted(
        {"random" if any(i.weights == "random" for i in infos) else "real" for infos in outcome.replicas.values()}
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "generation_summary": {
            "total_images": outcome.planned_total,
            "successful_generations": len(outcome.images),
            "failed_generations": len(outcome.failures),
            "total_time_seconds": round(outcome.total_seconds, 3),
            "average_time_per_image": round(statistics.fmean(times), 3) if times else None,
            "primary_image_index": outcome.primary,
            # extensions
            "status": outcome.status,
            "image_completed": outcome.completed,
            "started_at": outcome.started_at,
            "stopped": outcome.stopped,
            "error": {"code": outcome.error.code, "message": outcome.error.message} if outcome.error else None,
            "weights": weights[0] if len(weights) == 1 else ("mixed" if weights else None),
            "report_path": report_path,
        },
        "images": [image_entry(f, file_sizes.get(f.position, 0)) for f in outcome.images],
        "failed_images": [
            {"planned_index": f.task.index, "model": f.task.model, "seed": f.task.seed, "error_code": f.code,
             "message": f.message, "attempts": _attempts(f.attempts)}
            for f in outcome.failures
        ],
        "model_comparison": model_comparison(outcome),
        "request": {
            "image_prompt": req.image_prompt,
            "folder_name": outcome.folder_display or str(req.folder_name),
            "image_count": req.image_count,
            "models": req.models_input,
            "generation_strategy": req.generation_strategy,
            "enable_comparison": req.enable_comparison,
            "quality_threshold": req.quality_threshold,
            "max_parallel": req.max_parallel,
            "seed": req.seed,
            "width": req.width,
            "height": req.height,
            "steps": req.steps,
        },
        "plan": {
            "models": outcome.plan_models,
            "selection_reason": outcome.selection_reason,
            "prompt_analysis": outcome.prompt_analysis,
            "base_seed": outcome.base_seed,
        },
        "models": {
            model: {
                "warm": any(i.warm for i in infos),
                "load_time_seconds": round(max((i.load_seconds for i in infos), default=0.0), 3),
                "replicas": [
                    {"replica": i.replica, "node_id": i.node_id, "device": i.device, "dtype": i.dtype,
                     "weights": i.weights, "load_time_seconds": round(i.load_seconds, 3),
                     "peak_gpu_memory_bytes": i.peak_gpu_memory_bytes, "gpu_ids": i.gpu_ids, "warm": i.warm,
                     "restarts": i.restarts, "memory_plan": i.memory_plan, "speed": i.speed,
                     **({"note": i.note} if i.note else {})}
                    for i in infos
                ],
            }
            for model, infos in outcome.replicas.items()
        },
        "quality": {
            "threshold": req.quality_threshold,
            "effective_threshold": outcome.effective_threshold,
            "relaxed": outcome.quality_relaxed,
            "below_threshold": [f.position for f in outcome.images if f.below_threshold],
            "scorer": outcome.scorer,
        },
        "degradations": outcome.degradations,
        "upload": outcome.upload or None,
        "cost_usd": round(sum(outcome.costs.values()), 6),
        "cost": outcome.cost or None,
        "prompt_language": outcome.translation,
        "prompt_truncation": outcome.prompt_truncation or None,
        "cluster": outcome.cluster,
        "resumed": outcome.resumed,
        "metrics": outcome.metrics,
    }


def quality_analysis(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "threshold": outcome.request.quality_threshold,
        "effective_threshold": outcome.effective_threshold,
        "relaxed": outcome.quality_relaxed,
        "scorer": outcome.scorer,
        "primary_image_index": outcome.primary,
        "images": [
            {
                "index": f.position,
                "filename": f.filename,
                "model": f.model,
                "seed": f.image.task.seed,
                "weights": f.image.weights,
                "below_threshold": f.below_threshold,
                **f.quality.as_dict(),
            }
            for f in outcome.images
        ],
    }


def comparison_markdown(outcome: RunOutcome, comparison: dict[str, Any]) -> str:
    req = outcome.request
    lines = [
        "# Model comparison",
        "",
        f"Prompt: {_md_escape(req.image_prompt)}",
        "",
        f"Strategy: `{req.generation_strategy}` · images planned: {outcome.planned_total} · "
        f"made: {len(outcome.images)} · failed: {len(outcome.failures)} · "
        f"comparison mode: {'on (same seeds for every model)' if req.enable_comparison else 'off'}",
        "",
        f"- Best quality: **{comparison['best_quality_model'] or '—'}**",
        f"- Fastest: **{comparison['fastest_model'] or '—'}**",
        f"- Most consistent: **{comparison['most_consistent_model'] or '—'}**",
        "",
        "| Model | Images | Failed | Mean quality | Spread | Seconds / image | Success rate | Cost | "
        "Cost / image | Quality per USD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, row in comparison["per_model"].items():
        per_image = format_usd(row["cost_per_image_usd"])
        lines.append(
            f"| {model} | {row['images']} | {row['failed']} | {_num(row['mean_quality'])} | "
            f"{_num(row['quality_spread'])} | {_num(row['mean_seconds_per_image'])} | "
            f"{_pct(row['success_rate'])} | {format_usd(row['cost_usd'])} | {per_image} | "
            f"{'—' if row['quality_per_usd'] is None else row['quality_per_usd']} |"
        )
    alternatives = (outcome.cost or {}).get("same_images_on") or {}
    if alternatives and outcome.images:
        lines += ["", f"The same {len(outcome.images)} image(s) on each remote model (list prices): "
                  + ", ".join(f"{m} {format_usd(usd)}" for m, usd in alternatives.items())
                  + f"; this run: {format_usd(sum(outcome.costs.values()))}."]
    if outcome.images:
        lines += ["", "## Images", "", "| # | File | Model | Seed | Variation | Quality | Tier |", "|---:|---|---|---:|---|---:|---|"]
        for f in outcome.images:
            mark = " (primary)" if f.position == outcome.primary else ""
            lines.append(
                f"| {f.position} | {f.filename}{mark} | {f.model} | {f.image.task.seed} | "
                f"{f.image.task.prompt_variation} | {f.quality.overall:.3f} | {f.quality.tier} |"
            )
    if outcome.failures:
        lines += ["", "## Failed generations", ""]
        for f in outcome.failures:
            lines.append(f"- planned #{f.task.index} on {f.task.model}: `{f.code}` {_md_escape(f.message)}")
    tested = set(comparison["models_tested"])
    past = {k: v for k, v in outcome.history.items() if v["model"] in tested}
    if past:
        lines += ["", "## History (earlier runs, most recent 50 per model)", "",
                  "| Model | Runs | Images | Failed | Success per attempt | Seconds / image | Mean quality | Cost |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key, row in past.items():
            lines.append(f"| {key} | {row['runs']} | {row['images']} | {row['failed']} | {_pct(row['success_rate'])} | "
                         f"{_num(row['seconds_per_image'])} | {_num(row['mean_quality'])} | "
                         f"{format_usd(row['cost_usd'])} |")
    if outcome.scorer.get("weights") == "random" or any(f.image.weights == "random" for f in outcome.images):
        lines += ["", "_Made or scored with random-weight test models: the scores say nothing about real quality._"]
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _pct(value) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def _md_escape(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("\n", " ").replace("\r", " ")
    for ch in "|`*_[]<>#":
        out = out.replace(ch, "\\" + ch)
    return out
