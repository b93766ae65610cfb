"""Speed options of a loaded pipeline: regional compilation, torchao quantization, diffusers'
attention dispatcher and its step caches. No Ray here.

Each option is `auto`, off, or a choice. An explicit choice the device cannot use is refused at
load (IMG_018 with the reason); under `auto` it is skipped and the reason recorded. What was
applied and what was skipped goes into the replica's report, so a run says how it ran.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from cluster.errors import ImageGenError
from models.registry import SpeedOptions

# Compute capability from which CUDA has float8 matrix units (Ada 8.9, Hopper 9.0, Blackwell).
FP8_CAPABILITY = (8, 9)


@dataclass
class SpeedRecord:
    applied: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"applied": dict(self.applied), "skipped": dict(self.skipped)}


def apply_speed(pipe, options: SpeedOptions, device: str, torch, model_id: str, plan_fp8: bool = False,
                offloaded: bool = False) -> SpeedRecord:
    """Apply `options` to `pipe`, which already holds its memory plan (`plan_fp8`, `offloaded`).
    Compilation comes last; the caller warms it up with a first generation, counted as load time."""
    record = SpeedRecord()
    cuda = device.startswith("cuda")
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)

    def refuse_or_skip(name: str, value: str, reason: str) -> None:
        if value != "auto":
            raise ImageGenError("IMG_018", f"model {model_id!r}: {name}: {value} cannot be used here: {reason}.")
        record.skipped[name] = reason

    # attention backend first: compilation traces whichever backend is set
    backend = options.attention_backend
    if backend == "auto":
        record.skipped["attention_backend"] = "auto: diffusers' default (PyTorch scaled_dot_product_attention)"
    elif denoiser is None or not hasattr(denoiser, "set_attention_backend"):
        refuse_or_skip("attention_backend", backend, "this pipeline's denoiser has no attention dispatcher")
    else:
        from diffusers.models.attention_dispatch import AttentionBackendName

        known = {b.value for b in AttentionBackendName}
        if backend not in known:
            raise ImageGenError("IMG_018", f"model {model_id!r}: attention_backend {backend!r} is not one of "
                                           f"diffusers': {', '.join(sorted(known))}.")
        if not cuda and backend not in ("native", "_native_math", "flex"):
            raise ImageGenError("IMG_018", f"model {model_id!r}: attention_backend {backend!r} needs a CUDA device.")
        try:
            denoiser.set_attention_backend(backend)
        except Exception as exc:  # noqa: BLE001 - e.g. its kernel package is not installed
            raise ImageGenError("IMG_018", f"model {model_id!r}: attention_backend {backend!r}: "
                                           f"{' '.join(str(exc).split())[:200]}") from None
        record.applied["attention_backend"] = backend

    cache = options.cache
    if cache in ("none", "auto"):
        if cache == "auto":
            record.skipped["cache"] = "auto: off (a step cache trades detail for speed; set cache: first-block)"
    elif denoiser is None or not hasattr(denoiser, "enable_cache"):
        raise ImageGenError("IMG_018", f"model {model_id!r}: cache {cache!r}: this denoiser takes no step cache.")
    else:
        import diffusers

        config = (diffusers.FirstBlockCacheConfig(threshold=options.cache_threshold) if cache == "first-block"
                  else diffusers.TaylorSeerCacheConfig())
        denoiser.enable_cache(config)
        record.applied["cache"] = cache if cache != "first-block" else f"first-block (threshold {options.cache_threshold:g})"

    quantize = options.quantize
    if quantize == "none":
        pass
    elif plan_fp8:
        refuse_or_skip("quantize", quantize, "the memory plan already stores the denoiser in float8")
    elif offloaded:
        refuse_or_skip("quantize", quantize, "the memory plan offloads the denoiser; quantized weights stay resident")
    else:
        reason = _quantize_unavailable(quantize, cuda, torch)
        if reason:
            refuse_or_skip("quantize", quantize, reason)
        elif denoiser is not None:
            chosen = "fp8" if quantize == "auto" else quantize
            _quantize(denoiser, chosen)
            record.applied["quantize"] = f"{chosen} dynamic (torchao, the denoiser's linear layers)"

    compile_option = options.compile
    if compile_option == "off":
        pass
    elif offloaded:
        refuse_or_skip("compile", compile_option, "the memory plan moves the denoiser's blocks between host and card")
    elif not cuda:
        refuse_or_skip("compile", compile_option, "regional compilation pays off on CUDA only; this replica runs on "
                                                  "the CPU")
    elif denoiser is None or not getattr(denoiser, "_repeated_blocks", None):
        refuse_or_skip("compile", compile_option, "this denoiser declares no repeated blocks to compile")
    else:
        denoiser.compile_repeated_blocks(fullgraph=True)
        record.applied["compile"] = "regional (the denoiser's repeated blocks), warmed up at load"
    return record


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

    if kind == "fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    else:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        quantize_(module, Int8DynamicActivationInt8WeightConfig())
