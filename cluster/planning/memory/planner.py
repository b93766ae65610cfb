"""Which memory plan a replica uses: the first, best first, whose footprint fits the card and the
host. Pure arithmetic over a model's sizes, tested as a table of cards.

Plans, best (fastest, full precision) first:
- `resident`: every component on the card in the model's dtype;
- `fp8-storage`: the large components (denoiser, text encoders) stored in float8 and computed in
  the model's dtype, layer by layer (diffusers' layerwise casting): half their bytes;
- `model-offload`: components live in host RAM and move onto the card only while they run;
- `group-offload`: the components' blocks stream onto the card a group at a time, the next group
  copied from pinned host memory on a CUDA stream while the current one computes;
- `sequential-offload`: every layer moved on its own, the last resort.
Offload plans take fp8 storage too, when the model allows it and full precision does not fit.
Each combines with VAE slicing (a batch decoded one image at a time) or tiling (an image decoded
in tiles) when the decode would not fit otherwise.

A generation has three phases that never overlap (encode the prompt, denoise, decode), so a
plan's footprint is its resident weights plus the costliest phase: that phase's working memory
and whatever weights the plan brings onto the card for it; plus the replica's cache of prompt
embeddings, which stays on the card.

One unit throughout: GiB (2**30 bytes), what `torch.cuda.mem_get_info` reports divided by 2**30;
card and host sizes are given in it too. Weights are counted, never assumed as a share: an fp8
plan keeps each component's `fp8_kept` parameters (counted on the meta device, see
actors.core.meta_count) in the compute dtype, and group offload holds two blocks and the parameters
outside the blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from cluster.planning.memory.sizes import Component, ModelSizes

GIB = 2**30
PLAN_NAMES = ("resident", "fp8-storage", "model-offload", "group-offload", "sequential-offload")
# Plans that move weights onto a CUDA card as they run: a CPU replica cannot carry them out (the actor
# refuses them; feasibility refuses them on a cluster without GPUs). Group offload works on the CPU.
NEEDS_CUDA = ("model-offload", "sequential-offload")
# CUDA's context, cuBLAS workspaces and the caching allocator's slack: memory the card reports in
# use that no tensor accounts for.
CUDA_OVERHEAD_GB = 0.75
# Only components this large are worth casting (the text encoder CLIP-L, 123M parameters, is not).
FP8_MIN_PARAMS = 200_000_000
# Distinct prompts whose embeddings a replica keeps on its card (actors.core.diffusers_generator).
PROMPT_CACHE_ENTRIES = 64
# Sequential offload holds about one layer at a time: a fraction of a block.
SEQUENTIAL_LAYER_SHARE = 0.15
# The process itself (torch, diffusers, the Ray worker) beside what a plan keeps in host RAM.
HOST_MARGIN_GB = 4.0
# Host RAM a pipeline loaded straight onto its card passes through (safetensors shards, buffers).
DIRECT_LOAD_HOST_GB = 1.0


@dataclass(frozen=True)
class MemoryPlan:
    """How one replica holds its model; picklable, sent to the actor that carries it out."""

    name: str  # a PLAN_NAMES entry, "declared" (the model's own gpu_memory_gb) or "cpu"
    fp8: bool = False
    vae: str = "none"  # "none" | "slicing" | "tiling"
    gpu_gb: float = 0.0  # the footprint on the card, GiB: what the placement bundle reserves
    host_gb: float = 0.0  # host RAM the plan holds at its peak (offloaded weights, pinning, loading), GiB
    batch: int = 1
    reason: str = ""

    @property
    def offload(self) -> str:
        return {"model-offload": "model", "group-offload": "group", "sequential-offload": "sequential"}.get(
            self.name, "none")

    @property
    def label(self) -> str:
        parts = [self.name]
        if self.fp8 and self.name != "fp8-storage":
            parts.append("fp8")
        if self.vae != "none":
            parts.append(f"vae-{self.vae}")
        return " + ".join(parts)

    def as_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "fp8": self.fp8, "vae": self.vae,
                "footprint_gb": self.gpu_gb, "host_gb": self.host_gb, "batch": self.batch, "reason": self.reason}


@dataclass(frozen=True)
class Candidate:
    plan: MemoryPlan
    fits: bool
    why_not: str = ""


@dataclass(frozen=True)
class PlanChoice:
    plan: MemoryPlan | None
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)

    def table(self) -> str:
        """Every plan tried, with its footprint: what an IMG_010 message and --dry-run show."""
        return "; ".join(f"{c.plan.label} {c.plan.gpu_gb:g} GiB GPU + {c.plan.host_gb:g} GiB host"
                         + ("" if c.fits else f" ({c.why_not})") for c in self.candidates)


@dataclass(frozen=True)
class Need:
    """What a plan is asked to fit."""

    card_gb: float
    host_gb: float | None  # None: unknown, not checked
    batch: int = 1
    width: int = 1024
    height: int = 1024
    allow_fp8: bool = True
    cuda: bool = True  # the card is a CUDA device (offload plans need one)


def _gb(value: float) -> float:
    return math.ceil(value * 10) / 10  # round up to 0.1 GiB: never plan a footprint smaller than computed


def weights_gb(c: Component, dtype_bytes: int, fp8: bool) -> float:
    """GiB of `c`'s weights as the plan stores them: in fp8, one byte for each parameter it casts
    and the compute dtype's for each it keeps (all of them when not counted)."""
    if fp8 and casts_to_fp8(c):
        kept = c.params if c.fp8_kept is None else c.fp8_kept
        return ((c.params - kept) + kept * dtype_bytes) / GIB
    return c.params * dtype_bytes / GIB


def prompt_cache_gb(sizes: ModelSizes) -> float:
    """The replica's cached prompt embeddings (T5's tokens and CLIP's pooled vector per prompt)."""
    act = sizes.activations
    return PROMPT_CACHE_ENTRIES * (act.prompt_tokens * act.prompt_width + act.pooled_width) * sizes.dtype_bytes / GIB


def casts_to_fp8(c: Component) -> bool:
    return c.role in ("denoiser", "text_encoder") and c.params >= FP8_MIN_PARAMS


def _phases(sizes: ModelSizes, need: Need, vae: str) -> dict[str, float]:
    """Working memory of each phase, GiB."""
    act = sizes.activations
    scale = need.width * need.height / act.reference_pixels
    decode = {"none": act.vae_decode_gb_per_image * scale * need.batch,
              "slicing": act.vae_decode_gb_per_image * scale,
              "tiling": act.vae_decode_gb_per_image * min(scale, act.vae_tile_pixels / act.reference_pixels)}[vae]
    return {"text_encoder": act.text_encoder_gb, "denoiser": act.denoiser_gb_per_image * scale * need.batch,
            "vae": decode}


def _onloaded_gb(c: Component, name: str, dtype_bytes: int, fp8: bool) -> float:
    """Weights of `c` on the card while it runs, under offload plan `name`."""
    whole = weights_gb(c, dtype_bytes, fp8)
    if name == "model-offload" or not c.largest_block:
        return whole
    per_param = whole / c.params  # blocks held at the component's mean precision
    block, outside = c.largest_block * per_param, c.outside_blocks * per_param
    if name == "group-offload":  # the block computing, the next one arriving, and the rest
        return min(whole, 2 * block + outside)
    return min(whole, SEQUENTIAL_LAYER_SHARE * block + outside)


def footprint(sizes: ModelSizes, name: str, fp8: bool, vae: str, need: Need) -> tuple[float, float]:
    """(GPU GiB, host GiB) of a plan."""
    phases = _phases(sizes, need, vae)
    parts = sizes.components
    b = sizes.dtype_bytes
    if name in ("resident", "fp8-storage"):
        weights = sum(weights_gb(c, b, fp8) for c in parts)
        gpu = weights + max(phases.values())
        # loading: full precision goes straight onto the card (a tensor at a time); fp8 casts one
        # component at a time in host RAM before it moves
        host = max((c.params * b / GIB for c in parts), default=0.0) if fp8 else DIRECT_LOAD_HOST_GB
    else:
        peaks = []
        for role, working in phases.items():
            onloaded = [_onloaded_gb(c, name, b, fp8) for c in parts if c.role == role]
            peaks.append(working + max(onloaded, default=0.0))
        gpu = max(peaks)
        stored = [weights_gb(c, b, fp8) for c in parts]
        host = sum(stored)
        if name == "group-offload" and need.cuda:
            # streams copy from pinned memory: each component's pinned copy is made while its
            # unpinned weights still exist, so the largest one is there twice for a moment
            host += max(stored, default=0.0)
    return _gb(gpu + prompt_cache_gb(sizes) + CUDA_OVERHEAD_GB), _gb(host + HOST_MARGIN_GB)


def candidates(sizes: ModelSizes, need: Need, only: str | None = None) -> list[MemoryPlan]:
    """Every plan, best first; `only`: the variants of one plan name."""
    names = [only] if only else list(PLAN_NAMES)
    out = []
    for name in names:
        if name == "fp8-storage":
            precisions = [True]
        elif name in ("resident", "sequential-offload"):  # accelerate's per-layer hooks do not take fp8 casts
            precisions = [False]
        else:
            precisions = [False, True]
        for fp8 in precisions:
            vaes = ["none", "slicing", "tiling"] if need.batch > 1 else ["none", "tiling"]
            for vae in vaes:
                gpu, host = footprint(sizes, name, fp8, vae, need)
                out.append(MemoryPlan(name, fp8, vae, gpu, host, need.batch))
    return out


def choose(sizes: ModelSizes, need: Need, forced: str | None = None) -> PlanChoice:
    """The first plan that fits `need` (or, `forced`, the first variant of that plan that does)."""
    tried: list[Candidate] = []
    for plan in candidates(sizes, need, forced):
        why = why_not(plan, need)
        tried.append(Candidate(plan, not why, why))
        if not why:
            reason = _reason(plan, need, tried)
            return PlanChoice(replace(plan, reason=reason), _summary(tried))
    return PlanChoice(None, _summary(tried))


def why_not(plan: MemoryPlan, need: Need) -> str:
    """Why `plan` does not fit `need`; "" when it does."""
    if plan.fp8 and not need.allow_fp8:
        return "fp8 not allowed for this model"
    if plan.offload != "none" and not need.cuda:
        return "needs a CUDA device"
    if plan.gpu_gb > need.card_gb:
        return f"needs {plan.gpu_gb:g} GiB, the card has {need.card_gb:g}"
    if need.host_gb is not None and plan.host_gb > need.host_gb:
        return f"needs {plan.host_gb:g} GiB host RAM, the host has {need.host_gb:g}"
    return ""


def fitting(sizes: ModelSizes, need: Need) -> list[MemoryPlan]:
    """Every plan that fits, best first: per plan and precision, its first variant that does."""
    found: dict[tuple[str, bool], MemoryPlan] = {}
    for plan in candidates(sizes, need):
        if (plan.name, plan.fp8) not in found and not why_not(plan, need):
            found[(plan.name, plan.fp8)] = plan
    return list(found.values())


def _reason(plan: MemoryPlan, need: Need, tried: list[Candidate]) -> str:
    better = [c for c in tried[:-1] if c.plan.vae == "none"]
    if not better:
        return f"fits a {need.card_gb:g} GiB card"
    first = better[0]
    return f"{first.plan.label} does not fit ({first.why_not}); {plan.label} fits a {need.card_gb:g} GiB card"


def _summary(tried: list[Candidate]) -> tuple[Candidate, ...]:
    """One line per plan (its plain variant, or the one that fit): the VAE variants in between
    only matter for the one chosen."""
    shown: dict[tuple[str, bool], Candidate] = {}
    for c in tried:
        key = (c.plan.name, c.plan.fp8)
        if key not in shown or c.fits:
            shown[key] = c
    return tuple(shown.values())


def batch_for(sizes: ModelSizes, need: Need, plan: MemoryPlan, room_gb: float, max_batch: int) -> MemoryPlan:
    """The largest batch (up to `max_batch`) the chosen plan runs within `room_gb` (what the card
    has free now): spare memory goes to batching, never to a slower plan."""
    best = plan
    for batch in range(plan.batch + 1, max_batch + 1):
        bigger = replace(need, batch=batch)
        gpu, host = footprint(sizes, plan.name, plan.fp8, plan.vae, bigger)
        if gpu > min(room_gb, need.card_gb) or (need.host_gb is not None and host > need.host_gb):
            break
        best = replace(plan, gpu_gb=gpu, host_gb=host, batch=batch)
    return best
