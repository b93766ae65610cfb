"""What a person reads when a run ends: the outcome, and one line for each thing that changed on
the way (the report holds the detail; these lines say that it is there). The direct path prints
these; the front door sends the same lines to its client, which prints them."""

from __future__ import annotations

from cluster.observability.progress import one_line
from cluster.planning.costs.money import format_usd
from cluster.observability.prompt_truncation import summary_line
from cluster.output.report import RunOutcome


def summary_lines(result) -> list[str]:
    """The lines `generate` prints on stdout when a run ends (`result`: a RunResult), each one line."""
    # the folder comes from folder-name, model ids from --config, messages from backends
    outcome, outputs = result.outcome, result.outputs
    made, planned = len(outcome.images), outcome.planned_total
    lines = [f"{outcome.status}: {made}/{planned} images in {outcome.total_seconds:.1f}s -> {outcome.folder_display}"]
    primary = outcome.primary_image
    if primary is not None:
        lines.append(f"primary: images/generated-image.png ({primary.model}, seed {primary.image.task.seed}, "
                     f"quality {primary.quality.overall:.3f})")
    for failure in outcome.failures:
        lines.append(f"failed: planned image {failure.task.index} on {failure.task.model}: {failure.code} "
                     f"{failure.message}")
    lines += [f"note: {change}" for change in changes(outcome, result.exit_code)]
    lines.append(f"report: {outputs['generation-report']}")
    return [one_line(line) for line in lines]


def summary_event(result, path: str) -> dict:
    """The last JSON line of `generate --json`; `path`: which way the run went (direct, front-door)."""
    return {"event": "summary", "status": result.outcome.status, "exit_code": result.exit_code,
            "outputs": result.outputs, "changes": changes(result.outcome, result.exit_code), "path": path}


def error_line(result) -> str | None:
    """The `error IMG_0xx: ...` line for stderr when the run failed, else None."""
    error = result.outcome.error
    if error is None or result.exit_code == 0:
        return None
    return f"error {error.code}: {one_line(error.message)}"


def changes(outcome: RunOutcome, exit_code: int) -> list[str]:
    """One line per change from what was asked: budget, quality threshold, fallbacks, the total
    timeout, random weights, the scorer, the prompt's translation, what the models' encoders cut of
    the prompt, a stop the exit status hides."""
    lines = [line for d in outcome.degradations if (line := _degradation(d))]
    random = sorted({f.image.task.model for f in outcome.images if f.image.weights == "random"})
    if random:
        lines.append(f"random weights: {', '.join(random)} made test patterns, not real pictures "
                     "(a demo or test model)")
    lines += _scoring(outcome)
    translation = outcome.translation or {}
    if translation and not translation.get("english") and translation.get("note"):
        lines.append(f"prompt not translated ({translation.get('language')}): {translation['note']}")
    cut = summary_line(outcome.prompt_truncation)
    if cut:
        lines.append(cut)
    if outcome.error is not None and exit_code == 0:  # the run made images, so no error line follows
        lines.append(f"{outcome.error.code}: {outcome.error.message}")
    return lines


def _degradation(d: dict) -> str | None:
    strategy = d.get("strategy")
    if strategy == "budget":
        parts = []
        if d.get("images_moved"):
            parts.append(f"{d['images_moved']} image(s) moved to {d['images_moved_to']}")
        if d.get("images_dropped"):
            parts.append(f"{d['images_dropped']} image(s) dropped")
        return (f"budget: {', '.join(parts) or 'plan cut'} to stay within --budget-usd "
                f"{format_usd(d.get('budget_usd'))} (IMG_029)")
    if strategy == "budget_stop":
        return (f"budget: images not started once spending reached --budget-usd {format_usd(d.get('budget_usd'))} "
                "(IMG_029)")
    if strategy == "quality_relaxation":
        return (f"quality: no image reached --quality-threshold {d['threshold']:g}; relaxed to {d['relaxed_to']:g} "
                "(IMG_004)")
    if strategy == "fallback_model":
        return f"fallback: images of {d['from_model']} moved to {d['to_model']} ({d['trigger']})"
    if strategy == "reduce_image_count" and d.get("images_dropped"):
        return f"time: {d['images_dropped']} image(s) dropped near total_workflow_timeout (IMG_003)"
    return None


def _scoring(outcome: RunOutcome) -> list[str]:
    scorer = outcome.scorer or {}
    asked = outcome.request.scorer
    if scorer.get("name") == "weight-free" and asked != "none" and outcome.images:
        return [f"scores: weight-free only (technical quality, artifacts): {scorer.get('note') or 'no CLIP scorer'}"]
    if scorer.get("weights") == "random":
        return [f"scores: scorer {scorer.get('name')} has random weights; its scores say nothing about quality"]
    return []
