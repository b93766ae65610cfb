"""One run, end to end, in one direction:

request -> preflight -> plan -> replicas + scheduler -> scoring -> primary -> writer -> outputs

Errors found before generation (bad input, missing weights or credentials, no disk)
raise and write nothing. Errors during generation end in a written report that says
what happened; the exit status is 0 when at least one image was made.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from cluster import env
from cluster.errors import ImageGenError, describe_exception
from cluster.durability.guard import RunGuard
from cluster.durability.journal import Resumed, RunJournal, request_key
from cluster.costs.budget import BudgetTracker, estimate, fit
from cluster.costs.config import CostConfig, load_costs
from cluster.costs.pricing import cost_section, image_costs, remote_alternatives
from cluster.events import Events
from cluster.feasibility import check_runnable
from cluster.gallery import render_gallery
from cluster.github_output import append_outputs
from cluster.history import History, safely
from cluster.limits import Limits
from cluster.metrics import RayMetricsSink, run_metrics
from cluster.placement import cluster_nodes
from cluster.planner import Plan, make_plan, retarget
from cluster.prompt_truncation import record_truncations
from cluster.preflight import check_disk_space, check_folder_owned, clean_stale_staging, estimate_bytes
from cluster.ray_runtime import RayRuntime
from cluster.replicas import ReplicaPool
from cluster.report import FinalImage, RunOutcome
from cluster.work import FailedImage
from cluster.retry import ABORT_CODES, RetryPolicy
from cluster.scheduler import ScheduleResult, Scheduler
from cluster.quality import QualityScore
from cluster.scoring import Scorer, WeightFreeScorer, make_scorer
from cluster.strategies import SequentialSource, StaticSource
from cluster.request import GenerationRequest
from cluster.uploader import GcsUploader, UploadConfig, load_upload_config
from cluster.writer import PRIMARY_NAME, WrittenRun, display_path, file_url, primary_url_of, write_run
from models import availability
from models.registry import ModelSpec, Registry
from models.scorers import ScoringConfig, load_scoring


class _Refused(Exception):
    """A refusal found once the cluster is known (budget, translation, a model no node can run):
    the run ends as one whose preflight failed, with nothing written."""

    def __init__(self, error: ImageGenError):
        super().__init__(error.code)
        self.error = error


@dataclass
class RunResult:
    outcome: RunOutcome
    written: WrittenRun
    outputs: dict[str, str]
    events: Events = field(default_factory=Events)

    @property
    def exit_code(self) -> int:
        if self.outcome.stopped == "interrupted":
            return 130
        if not self.outcome.completed or self.aborted or self.upload_failed:
            return 1
        return 0

    @property
    def upload_failed(self) -> bool:
        """Downstream steps read the uploaded URLs; a run that could not provide them fails."""
        return self.outcome.error is not None and self.outcome.error.code == "IMG_022"

    @property
    def aborted(self) -> bool:
        """The run was stopped by an error the design card says fails the workflow (auth, disk)."""
        return self.outcome.error is not None and self.outcome.error.code in ABORT_CODES


def run_generation(
    request: GenerationRequest,
    registry: Registry,
    limits: Limits,
    *,
    events: Events | None = None,
    stop: threading.Event | None = None,
    scorer: Scorer | None = None,
    scoring: ScoringConfig | None = None,
    base_seed: int | None = None,
    upload_config: UploadConfig | None = None,
    history: History | None = None,
    resident: bool | None = None,
    guard: RunGuard | None = None,
    costs: CostConfig | None = None,
) -> RunResult:
    """`resident`: use the cluster's warm replicas and leave them running (default: when the run
    joins a cluster with --address; an embedded instance ends with the run anyway). `guard`: writes
    the partial report from the journal when a signal or a lost cluster leaves the run no time to."""
    events = events or Events()
    started = time.monotonic()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    # --- preflight: nothing is written if any of this fails ---
    check_folder_owned(request.folder_name)
    clean_stale_staging(request.folder_name)
    history = history or History()
    journal = RunJournal(request.folder_name)
    key = request_key(_journal_key_fields(request, registry))
    if request.no_resume:
        journal.discard()
    resumed = None if request.no_resume else journal.load(key)
    if resumed is not None:
        plan = _resumed_plan(resumed, request, registry)
    else:
        plan = make_plan(request, registry, history=safely(history.score), base_seed=base_seed)
    tracker, budget_note = _budget(request, registry, plan, history, costs, resumed)
    free_bytes = check_disk_space(
        request.folder_name,
        estimate_bytes([t.width * t.height for t in plan.tasks]),
        limits.perf.disk_space_limit,
    )

    schedule = ScheduleResult()
    translation: dict | None = resumed.header.get("translation") if resumed is not None else None
    replicas: dict = {}
    cluster_info: dict = {}
    scores: list[QualityScore] = []
    scorer_info: dict = {}
    scorer_failure = ""
    error: ImageGenError | None = None
    try:
        with RayRuntime(request.address, request.debug) as runtime:
            cluster_info = runtime.describe()
            for note in cluster_info.get("notes", []):
                events.emit("ray_note", message=note)
            if guard is not None and runtime.owned:
                guard.watch(_gcs_address())
            metrics_sink = _ray_metrics_sink(events)
            if resident is None:  # a cluster that outlives the run keeps its models warm for the next
                resident = request.address not in (None, "local") or runtime.joined is not None
            try:
                if resumed is None:  # a resumed run's prompts were decided, and journaled, by its first run
                    planned = _planned_counts(plan)
                    translation = _translate_stage(request, registry, plan, events, resident, history)
                    if _planned_counts(plan) != planned:  # picked again from the English text: priced again
                        tracker, budget_note = _budget(request, registry, plan, history, costs)
                check_runnable(list(plan.specs.values()), cluster_nodes(), _sizes(plan), request.memory_plan,
                               limits.perf.memory_limit_per_image)
            except ImageGenError as exc:  # refused before anything was made or written
                if metrics_sink in events.sinks:
                    events.sinks.remove(metrics_sink)
                if guard is not None:
                    guard.unwatch()  # the embedded cluster stops now on purpose
                raise _Refused(exc) from None
            journal.start(key, plan.tasks, {"base_seed": plan.base_seed, "models": plan.models,
                                            "strategy": plan.strategy, "selection_reason": plan.selection_reason,
                                            "created": started_at, "translation": translation}, resumed)
            if resumed is not None:
                events.emit("run_resumed", kept=len(resumed.images), discarded=len(resumed.discarded),
                            missing=plan.total - len(resumed.images))
            events.emit("run_started", images=plan.total, models=",".join(plan.models), strategy=plan.strategy,
                        planned=_planned_counts(plan))
            if guard is not None:
                guard.attach(lambda code, message: _write_from_journal(
                    request, registry, plan, journal, code, message, started, started_at, resumed))
            pool = ReplicaPool(limits, request.max_parallel, events, resident=resident,
                               keep_alive_s=limits.scheduler.keep_alive_seconds, memory_plan=request.memory_plan)
            # the scorer loads while the models load and generate, started once they hold their groups
            run_scorer = scorer or make_scorer(request.scorer, scoring or load_scoring(), pool.nodes, events, resident,
                                               limits=limits, start=False)
            try:
                schedule = _schedule(request, registry, limits, plan, pool, run_scorer, events, stop, started,
                                     journal, resumed, tracker, translation)
                replicas = pool.collect_infos()
                cluster_info["nodes"] = len(pool.nodes)
            finally:
                pool.release()
            try:
                # every image scored together by one scorer, so scores compare; the sequential
                # strategy's per-image scores only steered its prompts
                schedule.images.sort(key=lambda i: i.task.index)
                scores = run_scorer.score(schedule.images)
                scorer_info = run_scorer.describe()
            except Exception as exc:  # noqa: BLE001 - scoring must never cost the run its images
                scorer_failure = f"the scorer failed: {describe_exception(exc)}"
                events.emit("scorer_failed", message=scorer_failure)
                scores = []
            finally:
                if scorer is None:
                    run_scorer.release()
                if metrics_sink in events.sinks:
                    events.sinks.remove(metrics_sink)
                if guard is not None:
                    guard.unwatch()  # an embedded cluster going down now is the run's own doing
    except _Refused as refused:  # nothing is written for a run that never started
        raise refused.error from None
    except ImageGenError as exc:
        error = exc
    if error is None:
        error = schedule.aborted
    if error is None and schedule.stopped == "interrupted":
        error = ImageGenError("IMG_021", "the run was interrupted by a stop signal; what finished is kept")
    if error is None and schedule.stopped == "total_timeout":
        error = ImageGenError("IMG_003", f"the run reached total_workflow_timeout "
                                         f"({limits.perf.total_workflow_timeout:g}s) with {len(schedule.images)} of "
                                         f"{plan.total} image(s) made; give it more time with --total-timeout "
                                         "SECONDS (total_workflow_timeout in the limits file)")
    if error is not None and (schedule.stopped or schedule.aborted):
        _unstarted_as_failed(plan, schedule, error)
    if error is None and not schedule.images and schedule.failures:
        last = schedule.failures[-1]
        error = ImageGenError(last.code, f"no image was made: {last.message}")

    if len(scores) != len(schedule.images):  # the scorer could not run (e.g. Ray went away)
        fallback = WeightFreeScorer(scorer_failure or "the scoring stage did not complete")
        scores, scorer_info = fallback.score(schedule.images), fallback.describe()
    if budget_note is not None:
        schedule.degradations.insert(0, budget_note)
    outcome = _outcome(request, plan, schedule, scores, scorer_info, replicas, error, started, started_at,
                       cluster_info)
    outcome.model_weights = {spec.id: spec.weights for spec in registry}
    outcome.resumed = resumed.summary() if resumed is not None else None
    outcome.translation = translation
    outcome.prompt_truncation = record_truncations(outcome.images, registry, events)
    _price(outcome, registry, replicas, costs)
    if tracker is not None:
        outcome.cost["budget"] = {"budget_usd": request.budget_usd, "policy": request.budget_policy,
                                  "spent_usd_as_estimated": round(tracker.spent, 6),
                                  "estimates": {m: e.as_dict() for m, e in tracker.estimates.items()}}
    events.emit("scored", images=len(outcome.images), primary=outcome.primary)
    outcome.history = safely(history.summary)() or {}
    outcome.metrics = run_metrics(outcome, schedule.max_in_flight, schedule.calls,
                                  {s.id for s in registry if not s.is_local}, free_bytes)
    upload_config = _upload_config(request, upload_config)
    if upload_config.uri and outcome.images:
        _upload(outcome, upload_config, events)
    if guard is not None and not guard.claim():
        threading.Event().wait()  # the guard is writing the report from the journal, then ends the process
    try:
        written = write_run(outcome, gallery=render_gallery)
    except OSError as exc:
        raise ImageGenError("IMG_005", f"writing {request.folder_name} failed ({exc.strerror or exc}); "
                                       "temporary files were removed.") from None
    finally:
        if guard is not None:
            guard.release()
    _settle_journal(journal, outcome)
    outputs = step_outputs(outcome, written)
    if safely(history.record)(outcome) is None:
        events.emit("history_not_recorded", path=str(history.path))
    github_output = env.github_output_path()
    if github_output is not None:
        append_outputs(github_output, outputs)
    events.emit("run_finished", status=outcome.status, images=len(outcome.images),
                failed=len(outcome.failures), seconds=round(outcome.total_seconds, 2))
    return RunResult(outcome, written, outputs, events)


def _translate_stage(request, registry: Registry, plan: Plan, events: Events, resident: bool,
                     history: History) -> dict | None:
    """The prompt detected, and translated for the models that cannot read it; the plan's tasks
    then carry what each model receives. With `auto` models and the smart strategy, models are
    picked again from the English text (prompt analysis reads English), with the same seeds."""
    from cluster.language.stage import translate_prompt
    from models.translators import load_translation

    specs = list({s.id: s for s in [*plan.specs.values(), *_fallback_specs(plan, registry)]}.values())
    result = translate_prompt(request.image_prompt, specs, request.translate, load_translation(), events, resident)
    if result.detection.english:
        return None
    if result.english and not request.models and plan.strategy == "smart":
        english = make_plan(request.model_copy(update={"image_prompt": result.english}), registry,
                            history=safely(history.score), base_seed=plan.base_seed)
        plan.models, plan.specs, plan.analysis, plan.tasks = english.models, english.specs, english.analysis, english.tasks
        plan.selection_reason = f"{english.selection_reason} (from the English translation)"
    translation = result.as_dict()
    plan.tasks = [_localise(task, translation, plan.specs[task.model]) for task in plan.tasks]
    return translation


def _localise(task, translation: dict | None, spec: ModelSpec):
    """`task` with the prompt `spec` reads (the original, or its English translation) and a record of both."""
    if not translation:
        return task
    from dataclasses import replace

    from cluster.language.detect import Detection, needs_translation

    detection = Detection(translation["language"], tuple(translation["languages"]))
    translated = bool(translation["english"]) and needs_translation(detection, spec.prompt_languages)
    return replace(task, prompt=translation["english"] if translated else translation["original"],
                   original_prompt=translation["original"], language=translation["language"],
                   translator=translation["translator"] or "" if translated else "",
                   english_prompt=translation["english"] or translation["original"])


def _journal_key_fields(request: GenerationRequest, registry: Registry) -> dict:
    """What decides a run's images: a rerun with the same resumes, anything else starts clean."""
    try:
        config = hashlib.sha256(registry.path.read_bytes()).hexdigest()
    except OSError:
        config = str(registry.path)
    return {"prompt": request.image_prompt, "models": request.models_input, "count": request.image_count,
            "strategy": request.generation_strategy, "comparison": request.enable_comparison, "seed": request.seed,
            "size": [request.width, request.height], "steps": request.steps, "memory_plan": request.memory_plan,
            "budget": [request.budget_usd, request.budget_policy], "translate": request.translate, "config": config}


def _resumed_plan(resumed: Resumed, request: GenerationRequest, registry: Registry) -> Plan:
    """The first run's plan, as journaled: the same models, tasks and seeds (a re-plan could pick
    other models, since selection reads the run history)."""
    from models.prompt_analysis import analyze_prompt

    header = resumed.header
    models = list(header["models"])
    return Plan(tasks=resumed.tasks, models=models, strategy=header["strategy"], base_seed=header["base_seed"],
                analysis=analyze_prompt(request.image_prompt),
                selection_reason=f"{header['selection_reason']} (resumed from the interrupted run's journal)",
                specs={m: registry.get(m) for m in models})


def _settle_journal(journal: RunJournal, outcome: RunOutcome) -> None:
    """A run that made every planned image needs its journal no more; an unfinished one keeps it,
    so running the same request again makes only what is missing."""
    if len(outcome.images) >= outcome.planned_total:
        journal.discard()
    else:
        journal.close()


def _gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _write_from_journal(request, registry, plan, journal, code, message, started, started_at, resumed) -> None:
    """The partial report when the run cannot write its own (stopped, cluster lost): the journaled
    images, weight-free scores, no Ray. Runs on the guard's thread."""
    images = sorted(list(journal.images), key=lambda i: i.task.index)
    done = {i.task.index for i in images}
    failures = [FailedImage(task, code, f"not made: {message}") for task in plan.tasks if task.index not in done]
    schedule = ScheduleResult(images=images, failures=failures,
                              stopped="interrupted" if code == "IMG_021" else None)
    scorer = WeightFreeScorer(f"{message}; scored without a CLIP model")
    outcome = _outcome(request, plan, schedule, scorer.score(images), scorer.describe(), {},
                       ImageGenError(code, message), started, started_at,
                       {"address": request.address or "embedded", "notes": [message]})
    outcome.model_weights = {spec.id: spec.weights for spec in registry}
    outcome.resumed = resumed.summary() if resumed is not None else None
    outcome.cost = {"note": "not priced: the run stopped before its replicas reported their time and cards"}
    written = write_run(outcome, gallery=render_gallery)
    journal.close()  # kept: the same request run again makes only what is missing
    outputs = step_outputs(outcome, written)
    github_output = env.github_output_path()
    if github_output is not None:
        append_outputs(github_output, outputs)
    print(f"{outcome.status}: {len(outcome.images)}/{outcome.planned_total} images -> {outcome.folder_display} "
          f"(error {code}; report: {outputs['generation-report']})", file=sys.stderr, flush=True)


def _budget(request, registry: Registry, plan: Plan, history: History, config: CostConfig | None,
            resumed: Resumed | None = None):
    """With --budget-usd: the plan priced (history, else list prices and defaults), refused or
    degraded when over, and the tracker the scheduler holds spending with. (None, None) without.
    A resumed run is priced for the images it has still to make; the journaled ones are kept."""
    if request.budget_usd is None:
        return None, None
    config = config or load_costs()
    specs = {s.id: s for s in registry}
    past = safely(history.summary)() or {}
    on_cpu = runs_on_cpu(request)
    counts = _planned_counts(plan, resumed)
    estimates = estimate(counts, specs, past, config, on_cpu)
    done = {i.task.index for i in resumed.images} if resumed is not None else set()
    tasks, degradation = fit([t for t in plan.tasks if t.index not in done], estimates, request.budget_usd,
                             request.budget_policy, lambda task, model: retarget(task, specs[model], request))
    if degradation is not None:
        plan.tasks = sorted([t for t in plan.tasks if t.index in done] + tasks, key=lambda t: t.index)
        plan.models = list(dict.fromkeys(t.model for t in plan.tasks))
        plan.specs = {m: specs[m] for m in plan.models}
    # the tracker prices the plan's images as `fit` did (so it accepts what the plan was accepted
    # with); a fallback model, which may take over any of them, as if it made them all
    fallbacks = {s.id: sum(counts.values()) for s in _fallback_specs(plan, registry) if s.id not in estimates}
    tracker = BudgetTracker(request.budget_usd, {**estimate(fallbacks, specs, past, config, on_cpu), **estimates})
    tracker.estimates = {m: replace(estimates[m], images=n) for m, n in _planned_counts(plan, resumed).items()}
    return tracker, degradation


def runs_on_cpu(request: GenerationRequest) -> bool:
    """Whether local models of a run on this machine (embedded, or its own cluster) run on CPUs
    because it has no GPU; a cluster elsewhere is assumed to have its cards."""
    from cluster.ray_runtime import detect_local_gpus

    return request.address in (None, "local", "auto") and detect_local_gpus().count == 0


def _price(outcome: RunOutcome, registry: Registry, replicas: dict, config: CostConfig | None) -> None:
    """Each image's cost (its share of GPU time, or its list price), per model and for the run."""
    config = config or load_costs()
    images = [f.image for f in outcome.images]
    specs = {s.id: s for s in registry}
    costs = image_costs(images, replicas, specs, config)
    outcome.costs = {}
    for cost in costs:
        outcome.costs[cost.model] = outcome.costs.get(cost.model, 0.0) + cost.usd
    # what the same images would have cost on each remote model this machine could use
    usable = [s for s in registry if not s.is_local and availability.check(s).ok]
    outcome.cost = cost_section(costs, remote_alternatives(usable, config), len(images))


def _ray_metrics_sink(events: Events):
    """Prometheus metrics through Ray, when the cluster exports them; a run never fails for them."""
    try:
        sink = RayMetricsSink()
    except Exception as exc:  # noqa: BLE001 - e.g. a Ray build without the metrics agent
        events.emit("metrics_unavailable", message=describe_exception(exc))
        return None
    events.sinks.append(sink)
    return sink


def _upload_config(request: GenerationRequest, config: UploadConfig | None) -> UploadConfig:
    config = config or load_upload_config()
    changes = {}
    if request.upload_uri:
        changes["uri"] = request.upload_uri
    if request.signed_urls is not None:
        changes["signed_urls"] = request.signed_urls
    return config.model_copy(update=changes) if changes else config


def _upload(outcome: RunOutcome, config: UploadConfig, events: Events) -> None:
    """Every image (and the primary copy) to GCS; URLs replaced where the upload worked."""
    uploader = GcsUploader(config)
    run_path = outcome.folder_display if not outcome.folder_display.startswith("/") else outcome.request.folder_name.name
    names = {f.position: uploader.object_name(run_path, f"images/{f.filename}") for f in outcome.images}
    files = {names[f.position]: f.image.png for f in outcome.images}
    primary = outcome.primary_image
    primary_name = uploader.object_name(run_path, f"images/{PRIMARY_NAME}") if primary else None
    if primary is not None:
        files[primary_name] = primary.image.png
    report = uploader.upload_all(files)
    for final in outcome.images:
        if names[final.position] in report.urls:
            final.url = report.urls[names[final.position]]
    if primary_name in report.urls:
        outcome.primary_url = report.urls[primary_name]
    outcome.upload = {
        "uri": config.uri, "signed_urls": config.signed_urls, "uploaded": len(report.urls),
        "failed": [{"object": name, "reason": reason, "attempts": report.attempts.get(name)}
                   for name, reason in report.failures.items()],
    }
    events.emit("uploaded", files=len(report.urls), failed=len(report.failures))
    if report.failures and outcome.error is None:
        first = next(iter(report.failures.items()))
        outcome.error = ImageGenError(
            "IMG_022", f"{len(report.failures)} of {len(files)} uploads to {config.uri} failed after "
                       f"{config.attempts} tries (first: {first[0]}: {first[1]}); the images are kept locally "
                       "with file:// URLs.")


def _schedule(request, registry, limits, plan, pool, scorer, events, stop, started: float,
              journal: RunJournal | None = None, resumed: Resumed | None = None,
              budget: BudgetTracker | None = None, translation: dict | None = None) -> ScheduleResult:
    fallback_specs = _fallback_specs(plan, registry)
    specs = {**{s.id: s for s in fallback_specs}, **plan.specs}
    scheduler = Scheduler(
        pool, specs, limits, request.max_parallel,
        RetryPolicy(limits.scheduler, [s.id for s in fallback_specs]),
        events,
        score=lambda image: scorer.score([image])[0].overall,
        # an image moving to another model gets the prompt that model reads (original or translation)
        resolve_fallback=lambda task, model: _localise(retarget(task, registry.get(model), request), translation,
                                                       registry.get(model)),
        stop=stop,
        planned=_planned_counts(plan, resumed),
        after_placement=scorer.start,
        on_image=journal.record if journal is not None else None,
        budget=budget,
    )
    kept = resumed.images if resumed is not None else []
    done = {image.task.index for image in kept}
    tasks = [task for task in plan.tasks if task.index not in done]
    # comparison mode keeps one prompt for every model, so sequential variations are off there
    sequential = plan.strategy == "sequential" and not request.enable_comparison
    return scheduler.run(SequentialSource(tasks) if sequential else StaticSource(tasks), started, done=kept)


def _unstarted_as_failed(plan: Plan, schedule: ScheduleResult, error: ImageGenError) -> None:
    """Every planned image a halted run neither made nor tried is a failure with the halt's code
    (a run can stop before its scheduler took every task: loading outlasted the total timeout)."""
    accounted = {i.task.index for i in schedule.images} | {f.task.index for f in schedule.failures}
    for task in plan.tasks:
        if task.index not in accounted:
            schedule.failures.append(FailedImage(task, error.code, f"not started: {error.message}"))


def _sizes(plan: Plan) -> dict[str, tuple[int, int]]:
    """Each model's image size in this run (its first task's)."""
    sizes: dict[str, tuple[int, int]] = {}
    for task in plan.tasks:
        sizes.setdefault(task.model, (task.width, task.height))
    return sizes


def _planned_counts(plan: Plan, resumed: Resumed | None = None) -> dict[str, int]:
    """Images each model is to make (those a resumed journal already holds are made)."""
    done = {i.task.index for i in resumed.images} if resumed is not None else set()
    counts: dict[str, int] = {}
    for task in plan.tasks:
        if task.index not in done:
            counts[task.model] = counts.get(task.model, 0) + 1
    return counts


def _fallback_specs(plan: Plan, registry: Registry) -> list[ModelSpec]:
    """Models a failed image may move to, fastest first: the plan's, then other available ones."""
    candidates = list(plan.specs.values()) + [
        s for s in registry if s.auto_select and s.id not in plan.specs and availability.check(s).ok
    ]
    return sorted(candidates, key=lambda s: (-s.speed, s.id not in plan.specs, s.id))


def _outcome(request, plan, schedule: ScheduleResult, scores: list[QualityScore], scorer_info: dict, replicas,
             error, started, started_at, cluster_info) -> RunOutcome:
    images = schedule.images
    finals = [
        FinalImage(position, image, score, image.remote_url or file_url(request.folder_name, position))
        for position, (image, score) in enumerate(zip(images, scores))
    ]
    degradations = list(schedule.degradations)
    relaxed = False
    effective = request.quality_threshold
    if finals:
        for final in finals:
            final.below_threshold = final.quality.overall < request.quality_threshold
        if all(f.below_threshold for f in finals):
            # Quality Relaxation (design card): keep the best we have and say so
            relaxed = True
            effective = max(f.quality.overall for f in finals)
            degradations.append({
                "strategy": "quality_relaxation", "trigger": "no image reached the quality threshold",
                "threshold": request.quality_threshold, "relaxed_to": round(effective, 4), "code": "IMG_004",
            })
    primary = max(range(len(finals)), key=lambda i: (finals[i].quality.overall, -i)) if finals else None
    return RunOutcome(
        request=request,
        plan_models=list(plan.models),
        selection_reason=plan.selection_reason,
        prompt_analysis=plan.analysis.as_dict(),
        base_seed=plan.base_seed,
        planned_total=plan.total,
        images=finals,
        failures=sorted(schedule.failures, key=lambda f: f.task.index),
        primary=primary,
        total_seconds=time.monotonic() - started,
        started_at=started_at,
        replicas=replicas,
        degradations=degradations,
        quality_relaxed=relaxed,
        effective_threshold=round(effective, 4),
        scorer=scorer_info,
        error=error,
        stopped=schedule.stopped,
        cluster=cluster_info,
        folder_display=display_path(request.folder_name),
    )


def step_outputs(outcome: RunOutcome, written: WrittenRun) -> dict[str, str]:
    primary = outcome.primary_image
    return {
        "image-completed": "true" if outcome.completed else "false",
        "google-image-url": primary_url_of(outcome),
        "used-model": primary.model if primary else "",
        "images-completed": str(len(outcome.images)),
        "image-urls": json.dumps(written.urls),
        "models-used": json.dumps([f.model for f in outcome.images]),
        "generation-report": display_path(written.report_path),
        "quality-scores": json.dumps([round(f.quality.overall, 4) for f in outcome.images]),
        "primary-image-index": str(outcome.primary if outcome.primary is not None else -1),
    }

