"""Speed options of a loaded pipeline: regional compilation, torchao quantization, diffusers'
attention dispatcher and its step caches. No Ray here.

Each option is `auto`, off, or a choice. What the device and the memory plan allow is decided
before any weight loads (`preflight`): an explicit choice that cannot run is refused there (IMG_018
with the reason, see cluster.planning.memory.combinations); under `auto` it is skipped and the reason
recorded. What was applied and what was skipped goes into the replica's report, so a run says how
it ran.

A compiled replica keeps serving whatever shapes arrive: the batch and sequence dimensions become
dynamic after a second size (Dynamo's automatic dynamic shapes), the recompile limit covers
COMPILED_SHAPES distinct (batch, width, height) calls, and calls beyond them run the blocks eagerly
where no compiled graph fits (`eager_on_recompile`) instead of failing (`fullgraph=True` turns a
hit limit into an error).
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass, field

from cluster.errors import ImageGenError
from cluster.planning.memory.combinations import compiles_whole, refuse_explicit
from cluster.planning.memory.planner import MemoryPlan
from models.registry import SpeedOptions

# Compute capability from which CUDA has float8 matrix units (Ada 8.9, Hopper 9.0, Blackwell).
FP8_CAPABILITY = (8, 9)
# Distinct call shapes a replica compiles graphs for; later new shapes run eagerly.
COMPILED_SHAPES = 8
# Cache entries one new shape may add to a block's code object: block instances receive their
# inputs in up to two layouts (a fresh tensor, a slice of the previous block's output).
ENTRIES_PER_SHAPE = 4


@dataclass
class SpeedRecord:
    applied: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"applied": dict(self.applied), "skipped": dict(self.skipped)}


def preflight(options: SpeedOptions, plan: MemoryPlan, device: str, torch, model_id: str) -> SpeedRecord:
    """What `options` become under `plan` on `device`, before anything loads: IMG_018 for an explicit
    choice that cannot run; the skipped `auto` ones with their reasons."""
    cuda = device.startswith("cuda")
    record = SpeedRecord(skipped=refuse_explicit(model_id, options, plan, cuda))

    def refuse_or_skip(name: str, value: str, reason: str) -> None:
        if value != "auto":
            raise ImageGenError("IMG_018", f"model {model_id!r}: {name}: {value} cannot be used here: {reason}.")
        record.skipped[name] = reason

    backend = options.attention_backend
    if backend == "auto":
        record.skipped["attention_backend"] = "auto: diffusers' default (PyTorch scaled_dot_product_attention)"
    else:
        from diffusers.models.attention_dispatch import AttentionBackendName

        known = {b.value for b in AttentionBackendName}
        if backend not in known:
            raise ImageGenError("IMG_018", f"model {model_id!r}: attention_backend {backend!r} is not one of "
                                           f"diffusers': {', '.join(sorted(known))}.")
        if not cuda and backend not in ("native", "_native_math", "flex"):
            raise ImageGenError("IMG_018", f"model {model_id!r}: attention_backend {backend!r} needs a CUDA device.")
    if options.cache == "auto":
        record.skipped["cache"] = "auto: off (a step cache trades detail for speed; set cache: first-block)"
    if options.quantize != "none" and "quantize" not in record.skipped:
        reason = _quantize_unavailable(options.quantize, cuda, torch)
        if reason:
            refuse_or_skip("quantize", options.quantize, reason)
    return record


def apply_speed(pipe, options: SpeedOptions, record: SpeedRecord, model_id: str) -> SpeedRecord:
    """Apply to `pipe` (which already holds its memory plan) what `preflight` let through.
    Compilation comes last; the caller warms it up, counted as load time."""
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    skipped = record.skipped

    # attention backend first: compilation traces whichever backend is set
    backend = options.attention_backend
    if backend != "auto":
        if denoiser is None or not hasattr(denoiser, "set_attention_backend"):
            raise ImageGenError("IMG_018", f"model {model_id!r}: attention_backend {backend!r}: this pipeline's "
                                           "denoiser has no attention dispatcher.")
        try:
            denoiser.set_attention_backend(backend)
        except Exception as exc:  # noqa: BLE001 - e.g. its kernel package is not installed
            raise ImageGenError("IMG_018", f"model {model_id!r}: attention_backend {backend!r}: "
                                           f"{' '.join(str(exc).split())[:200]}") from None
        record.applied["attention_backend"] = backend

    cache = options.cache
    if cache not in ("none", "auto"):
        if denoiser is None or not hasattr(denoiser, "enable_cache"):
            raise ImageGenError("IMG_018", f"model {model_id!r}: cache {cache!r}: this denoiser takes no step cache.")
        import diffusers

        config = (diffusers.FirstBlockCacheConfig(threshold=options.cache_threshold) if cache == "first-block"
                  else diffusers.TaylorSeerCacheConfig())
        denoiser.enable_cache(config)
        record.applied["cache"] = cache if cache != "first-block" else f"first-block (threshold {options.cache_threshold:g})"

    if options.quantize != "none" and "quantize" not in skipped and denoiser is not None:
        chosen = "fp8" if options.quantize == "auto" else options.quantize  # preflight skips auto off CUDA
        _quantize(denoiser, chosen)
        record.applied["quantize"] = f"{chosen} dynamic (torchao, the denoiser's linear layers)"

    if options.compile != "off" and "compile" not in skipped:
        if denoiser is None or not getattr(denoiser, "_repeated_blocks", None):
            if options.compile != "auto":
                raise ImageGenError("IMG_018", f"model {model_id!r}: compile: on: this denoiser declares no repeated "
                                               "blocks to compile.")
            skipped["compile"] = "this denoiser declares no repeated blocks to compile"
        else:
            whole = compiles_whole(options)
            denoiser.compile_repeated_blocks(fullgraph=whole)
            record.applied["compile"] = ("regional (the denoiser's repeated blocks), warmed up at load" +
                                         ("" if whole else "; graph breaks at the step cache's hooks"))
    return record


class CompiledCalls:
    """Runs a compiled replica's calls: up to COMPILED_SHAPES distinct shapes compile, later ones
    run eagerly where no compiled graph fits. Never raises for a shape it has not seen."""

    def __init__(self, torch):
        import torch._dynamo

        self._torch = torch
        self.shapes = COMPILED_SHAPES
        self.seen: set[tuple] = set()
        self.eager_calls = 0  # calls that ran new shapes eagerly
        self.limit_hits = 0  # of which: calls that met the recompile limit before COMPILED_SHAPES shapes
        config = torch._dynamo.config
        # a replica process holds one pipeline: the limits are its own
        config.recompile_limit = max(1, int(self.shapes * ENTRIES_PER_SHAPE))
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * config.recompile_limit)

    def run(self, shape: tuple, call):
        from torch._dynamo.exc import FailOnRecompileLimitHit

        if shape not in self.seen and len(self.seen) >= self.shapes:
            return self._eagerly(call)
        self.seen.add(shape)
        try:
            return call()
        except FailOnRecompileLimitHit:  # more cache entries than planned: this call runs eagerly
            self.limit_hits += 1
            return self._eagerly(call)

    def _eagerly(self, call):
        self.eager_calls += 1
        with self._eager_for_new_shapes():
            return call()

    def _eager_for_new_shapes(self):
        set_stance = getattr(self._torch.compiler, "set_stance", None)
        return set_stance("eager_on_recompile") if set_stance else contextlib.nullcontext()


def _quantize_unavailable(quantize: str, cuda: bool, torch) -> str:
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install torchao, or the project's `speed` extra)"
    if not cuda:
        if quantize == "int8":  # torchao's int8 kernels run on the CPU; asked for, it is used
            return ""
        if quantize == "fp8":
            return "fp8 needs a CUDA card of compute capability 8.9 or later (int8 runs on the CPU)"
        # under auto a CPU replica keeps full precision: int8 there is the user's trade, not ours
        return "auto quantizes on CUDA cards only (set quantize: int8 to quantize on the CPU)"
    if quantize in ("fp8", "auto") and torch.cuda.get_device_capability() < FP8_CAPABILITY:
        major, minor = torch.cuda.get_device_capability()
        return f"fp8 needs compute capability 8.9 or later (this card is {major}.{minor}; int8 works)"
    return ""


def _quantize(module, kind: str) -> None:
    from torchao.quantization import quantize_

    # set_inductor_config=False: torchao would otherwise retune inductor for the whole process
    if kind == "fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    else:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        quantize_(module, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
