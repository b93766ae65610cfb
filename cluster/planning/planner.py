"""Request -> plan: which models, how many images each, with which seeds and prompts.

Count semantics (the design card's compatibility matrix): with a list of M models,
`image_count` N means N images per model (N x M in all); with `auto`, N images spread
over the models the selection picks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from cluster.errors import ImageGenError
from cluster.planning.request import GenerationRequest
from cluster.work import AdapterUse, ImageTask
from models import availability
from models.adapters import CODE as ADAPTER_CODE, check_fit, fits, load_adapters
from models.hub_cli import download_command
from models.prompt_analysis import PromptAnalysis, analyze_prompt
from models.registry import ModelSpec, Registry
from models.selection import HistoryScore, distribute, select_models


@dataclass
class Plan:
    tasks: list[ImageTask]
    models: list[str]
    strategy: str
    base_seed: int
    analysis: PromptAnalysis
    selection_reason: str
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    adapters: tuple[AdapterUse, ...] = ()  # every image's LoRA adapters, resolved with their hashes

    @property
    def total(self) -> int:
        return len(self.tasks)


def resolve_models(
    request: GenerationRequest, registry: Registry, analysis: PromptAnalysis, history: HistoryScore | None = None,
    require_available: bool = True,
) -> tuple[list[str], str]:
    """The models to run, after checking they can run here (IMG_002/IMG_007 when not; a dry run,
    `require_available=False`, reports what is missing instead)."""
    if request.models:
        for model_id in request.models:
            check = availability.check(registry.get(model_id))
            if require_available:
                check.raise_if_missing()
        return list(request.models), "models named by --models"
    candidates = [spec for spec in registry if spec.auto_select and takes_adapters(spec, request)]
    checks = [availability.check(spec) for spec in candidates]
    available = [spec for spec, check in zip(candidates, checks) if check.ok]
    if not available and request.adapters:
        raise ImageGenError(ADAPTER_CODE, no_model_for_adapters(request, registry))
    if not available:
        reasons = "; ".join(f"{c.model}: {c.reason.split(': ', 1)[-1]}" for c in checks[:3])
        raise ImageGenError(
            "IMG_002",
            "`--models auto` found no available model. Download FLUX.1-schnell "
            f"(`{download_command('black-forest-labs/FLUX.1-schnell')}`), set GOOGLE_API_KEY for Imagen, "
            f"or pass `--models tiny-flux` for the random-weight demo. ({reasons} ...)",
        )
    if request.generation_strategy == "smart":
        selection = select_models(analysis, registry, available, request.image_count, history)
        return list(selection.models), selection.reason
    # sequential/parallel with auto: the single best available model (quality, then speed).
    best = sorted(available, key=lambda s: (-s.quality, -s.speed, s.id))[0]
    return [best.id], f"best available model for the {request.generation_strategy} strategy"


def takes_adapters(spec: ModelSpec, request: GenerationRequest) -> bool:
    """Whether the request's adapters (if any) fit `spec`: smart selection picks only such models."""
    return all(fits(load_adapters().get(adapter_id), spec) for adapter_id, _ in request.adapters)


def no_model_for_adapters(request: GenerationRequest, registry: Registry) -> str:
    families = sorted({load_adapters().get(adapter_id).family for adapter_id, _ in request.adapters})
    fitting = [s.id for s in registry if takes_adapters(s, request)]
    return (f"`--models auto` found no available model that --adapters {request.adapters_input} fit (family "
            f"{', '.join(families)}); auto picks among {', '.join(s.id for s in registry if s.auto_select)}. "
            f"Models they fit: {', '.join(fitting) or 'none'}; name one with --models.")


def plan_adapters(request: GenerationRequest, specs: list[ModelSpec]) -> tuple[AdapterUse, ...]:
    """The request's adapters with their weights' hashes, checked against every planned model (its
    family, a memory plan that can hold them, its family's budget); IMG_031 when one cannot."""
    if not request.adapters:
        return ()
    from cluster import env
    from models.adapter_files import resolve, total_gb

    registry = load_adapters()
    uses = resolve(request.adapters, registry, env.cache_dir())
    for spec in specs:
        check_fit(request.adapters, spec, registry)
        if spec.memory_plan == "fp8-storage" and request.memory_plan in (None, "fp8-storage"):
            raise ImageGenError(ADAPTER_CODE, f"model {spec.id!r} is held in fp8 storage (memory_plan in its "
                                              "entry), which cannot take adapters; pass --memory-plan auto.")
        budget = registry.settings_for(spec).budget_gb
        if total_gb(uses, env.cache_dir()) > budget:
            raise ImageGenError(ADAPTER_CODE, f"--adapters {request.adapters_input} take "
                                              f"{total_gb(uses, env.cache_dir()):.2f} GiB, more than the "
                                              f"{budget:g} GiB budget_gb of family {spec.family} in "
                                              f"{registry.path.name}.")
    return uses


def make_plan(
    request: GenerationRequest, registry: Registry, history: HistoryScore | None = None, base_seed: int | None = None,
    require_available: bool = True,
) -> Plan:
    analysis = analyze_prompt(request.image_prompt)
    models, reason = resolve_models(request, registry, analysis, history, require_available)
    specs = {m: registry.get(m) for m in models}
    adapters = plan_adapters(request, list(specs.values()))
    if base_seed is None:
        base_seed = request.seed if request.seed is not None else secrets.randbelow(2**31)

    if request.models:
        assignment = [m for m in models for _ in range(request.image_count)]
    else:
        # group by model so each model's images are numbered together and batch together
        order = {m: i for i, m in enumerate(models)}
        assignment = sorted(distribute(request.image_count, models), key=order.__getitem__)

    tasks: list[ImageTask] = []
    per_model_seen: dict[str, int] = {}
    for index, model in enumerate(assignment):
        spec = specs[model]
        nth = per_model_seen.get(model, 0)
        per_model_seen[model] = nth + 1
        # Comparison mode: every model gets the same seeds, so image j of each model is a fair pair.
        seed = (base_seed + (nth if request.enable_comparison else index)) % (2**32)
        tasks.append(task_for(spec, request, index, seed, adapters=adapters))
    return Plan(tasks, models, request.generation_strategy, base_seed, analysis, reason, specs, adapters)


def task_for(spec: ModelSpec, request: GenerationRequest, index: int, seed: int,
             prompt: str | None = None, variation: str = "original", adapters: tuple[AdapterUse, ...] = ()) -> ImageTask:
    """The task for one image on `spec`, the request's overrides over the spec's defaults."""
    return ImageTask(
        index=index,
        model=spec.id,
        prompt=prompt if prompt is not None else request.image_prompt,
        seed=seed,
        width=request.width or spec.width,
        height=request.height or spec.height,
        steps=request.steps or spec.steps,
        guidance=spec.guidance,
        prompt_variation=variation,
        adapters=adapters,
    )


def retarget(task: ImageTask, spec: ModelSpec, request: GenerationRequest) -> ImageTask:
    """The same image (index, seed, prompt) on another model, e.g. a fallback."""
    return task.with_model(
        spec.id, request.steps or spec.steps, spec.guidance, request.width or spec.width, request.height or spec.height
    )



def planned_counts(plan: Plan, done: set[int] | frozenset[int] = frozenset()) -> dict[str, int]:
    """Images each model is to make; `done`: indices already made (a resumed run's journal holds them)."""
    counts: dict[str, int] = {}
    for task in plan.tasks:
        if task.index not in done:
            counts[task.model] = counts.get(task.model, 0) + 1
    return counts


def model_sizes(plan: Plan) -> dict[str, tuple[int, int]]:
    """Each model's image size in this plan (its first task's)."""
    sizes: dict[str, tuple[int, int]] = {}
    for task in plan.tasks:
        sizes.setdefault(task.model, (task.width, task.height))
    return sizes


def fallback_specs(plan: Plan, registry: Registry) -> list[ModelSpec]:
    """Models a failed image may move to, fastest first: the plan's, then other available ones."""
    adapters = load_adapters() if plan.adapters else None
    candidates = list(plan.specs.values()) + [
        s for s in registry if s.auto_select and s.id not in plan.specs and availability.check(s).ok
        and (adapters is None or all(fits(adapters.get(a.id), s) for a in plan.adapters))  # an image keeps its look
    ]
    return sorted(candidates, key=lambda s: (-s.speed, s.id not in plan.specs, s.id))
