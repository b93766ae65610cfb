"""Which speed options a memory plan can take, decided before anything loads. Pure, torch-free.

A replica's memory plan (`cluster.planning.memory.planner`) and its model's speed options
(`models.registry.SpeedOptions`) are chosen apart, and some pairs cannot run together:

- compilation traces the denoiser's blocks with Dynamo, which cannot trace the hooks that move
  weights: offload plans' onload/offload hooks, or layerwise casting's per-layer `module.to(dtype)`
  (Dynamo: "Attempted to use torch.nn.Parameter() constructor"). torchao's fp8 (`quantize: fp8`)
  stores float8 weights that do compile, on a resident plan.
- torchao's quantization replaces resident weights: not under a plan that already stores them in
  float8, nor under one that offloads them.
- a step cache's hooks are `torch.compiler.disable`d: compiling under one must allow graph breaks
  (`fullgraph=False`); the blocks between them are still compiled.

An option set explicitly that its plan cannot take is refused before loading (IMG_018, naming
both); under `auto` it is skipped and the reason recorded in the replica's report.
"""

from __future__ import annotations

from cluster.errors import ImageGenError
from cluster.planning.memory.planner import MemoryPlan
from models.registry import SpeedOptions

OFFLOADING = ("model-offload", "group-offload", "sequential-offload")


def conflicts(options: SpeedOptions, plan: MemoryPlan, cuda: bool) -> dict[str, str]:
    """option -> why `plan` on this device (`cuda`) cannot take it; only options that are not off."""
    out: dict[str, str] = {}
    offloaded = plan.name in OFFLOADING
    under = f"memory plan {plan.label!r}"
    if options.compile != "off":
        if offloaded:
            out["compile"] = f"{under} moves the denoiser's blocks between host and card; Dynamo cannot trace its hooks"
        elif plan.fp8:
            out["compile"] = (f"{under} stores weights in float8 through layerwise casting, whose per-layer casts "
                              "Dynamo cannot trace (float8 weights that compile: quantize: fp8 on a resident plan)")
        elif not cuda and options.compile == "auto":
            out["compile"] = "auto compiles on CUDA only (set compile: on to compile on the CPU)"
    if options.quantize != "none":
        if plan.fp8:
            out["quantize"] = f"{under} already stores the denoiser in float8"
        elif offloaded:
            out["quantize"] = f"{under} offloads the denoiser; quantized weights stay resident"
    return out


def refuse_explicit(model_id: str, options: SpeedOptions, plan: MemoryPlan, cuda: bool) -> dict[str, str]:
    """The conflicts of `auto` options (to skip, with their reasons); IMG_018 for an explicit one."""
    found = conflicts(options, plan, cuda)
    for name, reason in found.items():
        value = getattr(options, name)
        if value != "auto":
            raise ImageGenError("IMG_018", f"model {model_id!r}: {name}: {value} conflicts with its memory plan: "
                                           f"{reason}. Set {name}: auto (skipped where it cannot run) or "
                                           f"{'off' if name == 'compile' else 'none'}, or name another plan with "
                                           "--memory-plan.")
    return found


def compiles_whole(options: SpeedOptions) -> bool:
    """Whether the compiled blocks can be whole graphs: a step cache's hooks break them."""
    return options.cache in ("auto", "none")
