"""The design card's "Monitoring and Analytics": the report's `metrics` section, and the same
numbers as Prometheus metrics through `ray.util.metrics` while the run goes (exported by
every Ray node's metrics agent at its metrics_export_port, as `ray_kamui_*`)."""

from __future__ import annotations

import statistics
from collections import Counter as Tally
from typing import Any

from cluster.output.report import RunOutcome

GENERATION_SECONDS_BOUNDARIES = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 4) if values else None


def run_metrics(outcome: RunOutcome, max_in_flight: int, calls: int, remote_models: set[str],
                free_bytes: int | None = None) -> dict[str, Any]:
    """generation, performance and quality metrics of one run (the design card's three groups)."""
    finals = outcome.images
    attempts = [a for f in finals for a in f.image.attempts] + [a for f in outcome.failures for a in f.attempts]
    per_model_attempts: dict[str, list] = {}
    for attempt in attempts:
        per_model_attempts.setdefault(attempt.model, []).append(attempt)
    tiers = Tally(f.quality.tier for f in finals)
    scores = [f.quality.overall for f in finals]
    remote = [a.seconds for a in attempts if a.model in remote_models and a.replica != "-"]
    peaks = [i.peak_gpu_memory_bytes for infos in outcome.replicas.values() for i in infos if i.peak_gpu_memory_bytes]
    busy = sum(f.image.seconds for f in finals)
    return {
        "generation_metrics": {
            "total_images_requested": outcome.planned_total,
            "successful_generations": len(finals),
            "failed_generations": len(outcome.failures),
            "average_generation_time": _mean(f.image.seconds for f in finals),
            "model_success_rates": {
                model: round(sum(1 for a in items if a.code is None) / len(items), 4)
                for model, items in per_model_attempts.items()
            },
            "quality_score_distribution": {
                "min": round(min(scores), 4) if scores else None,
                "mean": _mean(scores),
                "max": round(max(scores), 4) if scores else None,
                "tiers": dict(tiers),
            },
            "error_codes": dict(Tally(a.code for a in attempts if a.code)),
        },
        "performance_metrics": {
            "api_response_times": {"count": len(remote), "mean_seconds": _mean(remote)},
            "memory_usage_peak": {"gpu_bytes": max(peaks) if peaks else None},
            "disk_space_utilization": {
                # each image once, the primary twice (its legacy copy)
                "image_bytes": sum(len(f.image.png) for f in finals)
                + (len(outcome.primary_image.image.png) if outcome.primary_image else 0),
                "free_bytes_before": free_bytes,
            },
            # generation seconds delivered per second of wall time, per call slot used at most
            "concurrent_generation_efficiency": round(busy / outcome.total_seconds / max(1, max_in_flight), 4)
            if outcome.total_seconds else None,
            "max_calls_in_flight": max_in_flight,
            "generation_calls": calls,
            "model_load_seconds": {m: round(max(i.load_seconds for i in infos), 3)
                                   for m, infos in outcome.replicas.items() if infos},
        },
        "quality_metrics": {
            "average_quality_scores_by_model": {
                model: _mean(f.quality.overall for f in finals if f.model == model)
                for model in dict.fromkeys(f.model for f in finals)
            },
            "prompt_alignment_scores": [f.quality.detailed.get("prompt_alignment") for f in finals],
            "user_satisfaction_indicators": None,  # no user feedback channel exists yet
            "artifact_detection_rates": round(
                sum(1 for f in finals if (f.quality.detailed.get("generation_artifacts") or 0) >= 0.5) / len(finals), 4)
            if finals else None,
        },
    }


class RayMetricsSink:
    """An event sink feeding Prometheus metrics (images per model, generation seconds, queue, in flight).
    Created after Ray is connected; metric objects are cheap and shared by name across runs."""

    def __init__(self):
        from ray.util.metrics import Counter, Gauge, Histogram

        self.generated = Counter("kamui_images_generated", description="Images made, per model.", tag_keys=("model",))
        self.failed = Counter("kamui_images_failed", description="Images that failed for good, per model and code.",
                              tag_keys=("model", "code"))
        self.seconds = Histogram("kamui_generation_seconds", description="Generation seconds per image.",
                                 boundaries=GENERATION_SECONDS_BOUNDARIES, tag_keys=("model",))
        self.queue = Gauge("kamui_queue_depth", description="Images waiting for a call slot.")
        self.in_flight = Gauge("kamui_calls_in_flight", description="Generation calls running now.")

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "image_done":
            self.generated.inc(1, tags={"model": event["model"]})
            self.seconds.observe(float(event.get("seconds") or 0.0), tags={"model": event["model"]})
        elif kind == "image_failed":
            self.failed.inc(1, tags={"model": event["model"], "code": event.get("code") or "unknown"})
        if "queued" in event:
            self.queue.set(float(event["queued"]))
        if "in_flight" in event:
            self.in_flight.set(float(event["in_flight"]))
