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
    """One component (cluster.memory.architectures.ComponentArch) built from its config, in `dtype`,
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
                        after_component: Callable[[str, object], None] | None = None):
    """A FluxPipeline of architecture `arch` (cluster.memory.architectures.Architecture) with random
    weights, on `device`; `after_component(name, module)` runs on each component as soon as it
    exists (an fp8 plan casts it there)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from models.tiny import clip_tokenizer, t5_tokenizer

    torch.manual_seed(seed)
    components = {}
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        for component_name, spec in arch.components.items():
            with torch.device(device):
                module = instantiate(spec, dtype, torch)
            module.eval()
            if after_component is not None:
                after_component(component_name, module)
            components[component_name] = module
    finally:
        torch.set_default_dtype(previous)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHNELL_SCHEDULER),
                        tokenizer=clip_tokenizer(), tokenizer_2=t5_tokenizer(max_length=512), **components)
