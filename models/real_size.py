"""Real-size pipelines with random weights, built on the device they run on.

`builtin:flux-schnell-arch` is FLUX.1-schnell's real architecture (configs/architectures/
flux1-schnell.yaml) with seeded random weights: every part of the product — memory plans, speed
options, actors, the GPU check — runs at real size without the 34 GB download (speed and memory
do not depend on the weights' values). Each component is created directly on the target device
in the model's dtype (no fp32 copy in host RAM) and, for an fp8 plan, cast right after it is made,
so the card never holds more than one full-precision component at a time. The tokenizers are the
tiny models' local stand-ins: they produce token ids, which is all the encoders need here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

ARCH_BUILDERS = {"flux-schnell-arch": "flux1-schnell"}
# FLUX.1-schnell's scheduler configuration (scheduler/scheduler_config.json of its repository)
FLUX_SCHNELL_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                          "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}


def instantiate(component, dtype, torch):
    """One component (cluster.planning.memory.architectures.ComponentArch) built from its config, in `dtype`,
    on the current default device (`with torch.device(...)`), weights initialised by its class."""
    cls = getattr(importlib.import_module(component.library), component.class_name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return cls(cls.config_class(**component.config)) if component.library == "transformers" else \
            cls(**component.config)
    finally:
        torch.set_default_dtype(previous)


def build_arch_pipeline(arch, device: str, dtype, torch, seed: int = 0,
                        cast: Callable[[str, object], None] | None = None, init_on: str | None = None):
    """A FluxPipeline of architecture `arch` (cluster.planning.memory.architectures.Architecture) with random
    weights, on `device`.

    Each component is built on the meta device (no memory) and `cast(name, module)` runs there (an
    fp8 plan registers its layerwise casts: the meta parameters take their storage dtypes); then it
    is materialised layer by layer: random values made on `init_on` (default `device`; a GPU makes
    17 B of them in seconds, a CPU in minutes) in the compute dtype, stored in the parameter's
    dtype, moved to `device`. So the card holds the components made so far in their storage dtypes
    plus one layer: an fp8 plan's FLUX never has its bf16 transformer and T5 on the card at once.
    A component whose constructor computes buffers (CLIP's position ids) is small and built directly.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from models.tiny import clip_tokenizer, t5_tokenizer

    torch.manual_seed(seed)
    components = {}
    for component_name, spec in arch.components.items():
        with torch.device("meta"):
            module = instantiate(spec, dtype, torch)
        if any(True for _ in module.buffers()):
            with torch.device(init_on or device):
                module = instantiate(spec, dtype, torch)
            if cast is not None:
                cast(component_name, module)
            module.to(device)
        else:
            if cast is not None:
                cast(component_name, module)
            materialise(module, device, init_on or device, dtype, torch)
        components[component_name] = module.eval()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHNELL_SCHEDULER),
                        tokenizer=clip_tokenizer(), tokenizer_2=t5_tokenizer(max_length=512), **components)


def materialise(module, device: str, init_on: str, dtype, torch) -> None:
    """Give `module`'s meta parameters random values, a layer at a time: each made on `init_on` in
    `dtype` by the layer's own initialiser, then stored on `device` in the dtype it had on meta."""
    with torch.no_grad():
        for layer in module.modules():
            own = list(layer.named_parameters(recurse=False))
            if not own:
                continue
            stored = {name: param.dtype for name, param in own}
            for name, param in own:
                layer._parameters[name] = torch.nn.Parameter(
                    torch.empty(param.shape, dtype=dtype, device=init_on), requires_grad=False)
            initialise(layer, torch)
            for name in stored:
                value = layer._parameters[name].data.to(device=device, dtype=stored[name])
                layer._parameters[name] = torch.nn.Parameter(value, requires_grad=False)


def initialise(layer, torch) -> None:
    if hasattr(layer, "reset_parameters"):
        layer.reset_parameters()
        return
    for name, param in layer.named_parameters(recurse=False):  # norms of their own (T5's, diffusers' RMSNorm)
        if param.dim() == 1:
            torch.nn.init.ones_(param) if name == "weight" else torch.nn.init.zeros_(param)
        else:
            torch.nn.init.normal_(param, std=0.02)
