"""Carry out a memory plan on a diffusers pipeline: load it the way the plan holds it. No Ray here.

The planner (`cluster.planning.memory.planner`) decided from sizes; this does it with diffusers' own
machinery — layerwise casting for fp8 storage, model/group/sequential CPU offload, VAE slicing and
tiling — never a hand-written offloader.

Loading follows the plan's host budget: a component stored in fp8 is loaded alone, cast, and moved
to the card before the next one is read, so host RAM holds one component at a time; a resident
pipeline loads straight onto its card.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from cluster.errors import ImageGenError
from cluster.planning.memory.planner import FP8_MIN_PARAMS, NEEDS_CUDA, MemoryPlan
from cluster.planning.memory.sizes import role_of, safetensors_sizes

# A tiled decode works on tiles this large (pixels per side), whatever the VAE's own default
# (FLUX's is 1024, so it would not tile a 1024x1024 image at all).
VAE_TILE = 512


def fp8_components(location: Path) -> list[tuple[str, str, str]]:
    """(name, library, class) of the components an fp8 plan stores in float8: denoisers and text
    encoders of at least FP8_MIN_PARAMS parameters, as the planner counted them (a small one is not
    worth its casts); in a model where none is that large (a tiny test model), all of them."""
    index = json.loads((location / "model_index.json").read_text(encoding="utf-8"))
    eligible = []
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or None in entry:
            continue
        library, class_name = entry
        if role_of(class_name) not in ("denoiser", "text_encoder"):
            continue
        sizes = safetensors_sizes(location / name)
        eligible.append(((name, library, class_name), sizes[0] if sizes else 0))
    large = [component for component, params in eligible if params >= FP8_MIN_PARAMS]
    return large or [component for component, _ in eligible]


def cast_to_fp8(module, compute_dtype, torch) -> None:
    """Store `module`'s weights in float8 (e4m3), computed in `compute_dtype` layer by layer;
    norms, embeddings of positions and patches stay as they are (diffusers' default skip list)."""
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    if hasattr(module, "enable_layerwise_casting"):  # a diffusers model: its own skip patterns too
        module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
        return
    # a transformers model names the layers it computes in full precision (T5: `wo`, whose forward
    # casts its input to the weight's dtype, which would then be float8)
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    apply_layerwise_casting(module, torch.float8_e4m3fn, compute_dtype,
                            skip_modules_pattern=tuple(DEFAULT_SKIP_MODULES_PATTERN) + keep)
    # transformers reads a model's dtype off its first weight, which is float8 now; pipelines cast
    # the embeddings they get to that dtype (FluxPipeline does), so it must say the compute dtype
    cls = type(module)
    module.__class__ = type(cls.__name__, (cls,), {"dtype": property(lambda self: compute_dtype),
                                                   "__module__": cls.__module__})


def load_planned(pipeline_cls, location: Path, kwargs: dict, plan: MemoryPlan, device: str, torch):
    """The pipeline at `location`, held as `plan` says, on `device` ("cuda" or "cpu")."""
    cuda = device.startswith("cuda")
    if plan.name in NEEDS_CUDA and not cuda:
        raise ImageGenError("IMG_010", f"memory plan {plan.label!r} needs a CUDA device; this replica runs on the CPU "
                                       "(pick resident, fp8-storage or group-offload, or run it on a GPU node).")
    dtype = kwargs["torch_dtype"]
    preloaded = {}
    if plan.fp8:
        for name, library, class_name in fp8_components(location):
            cls = getattr(importlib.import_module(library), class_name)
            extra = {"variant": kwargs["variant"]} if kwargs.get("variant") else {}
            component = cls.from_pretrained(location, subfolder=name, torch_dtype=dtype, local_files_only=True, **extra)
            cast_to_fp8(component, dtype, torch)
            if plan.offload == "none":
                component.to(device)  # before the next component is read: one at a time in host RAM
            preloaded[name] = component
    load_kwargs = dict(kwargs, **preloaded)
    if plan.offload == "none" and cuda and not preloaded:
        load_kwargs["device_map"] = "cuda"  # straight onto the card, not through host RAM
    pipe = pipeline_cls.from_pretrained(location, local_files_only=True, **load_kwargs)
    return finish_plan(pipe, plan, device, torch, placed="device_map" in load_kwargs)


def build_planned(name: str, plan: MemoryPlan, device: str, dtype, torch):
    """A real-size random-weight pipeline (models.real_size) held as `plan` says: built on meta and
    materialised layer by layer on the card for a resident plan (each large component's layers in
    float8 as they are made, for an fp8 plan); for an offload plan made on the card layer by layer
    and moved to host RAM at once (random values on a CPU take minutes)."""
    from cluster.planning.memory.architectures import load_architecture
    from models.real_size import ARCH_BUILDERS, build_arch_pipeline

    if plan.name in NEEDS_CUDA and not device.startswith("cuda"):
        raise ImageGenError("IMG_010", f"memory plan {plan.label!r} needs a CUDA device.")
    build_on = device if plan.offload == "none" else "cpu"

    def cast(component_name: str, module) -> None:
        from cluster.planning.memory.sizes import role_of

        if plan.fp8 and role_of(type(module).__name__) in ("denoiser", "text_encoder") and \
                sum(p.numel() for p in module.parameters()) >= FP8_MIN_PARAMS:
            cast_to_fp8(module, dtype, torch)

    pipe = build_arch_pipeline(load_architecture(ARCH_BUILDERS[name]), build_on, dtype, torch, cast=cast,
                               init_on=device)
    return finish_plan(pipe, plan, device, torch, placed=build_on == device)


def finish_plan(pipe, plan: MemoryPlan, device: str, torch, placed: bool = False):
    """The plan's placement of an assembled pipeline: onto the card, or its offload hooks; then
    the VAE mode. `placed`: the components are already on `device`."""
    cuda = device.startswith("cuda")
    if plan.offload == "none":
        if not placed:
            pipe.to(device)
    elif plan.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif plan.offload == "group":
        group_offload(pipe, device, torch, use_stream=cuda)
    elif plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    apply_vae(pipe, plan.vae)
    return pipe


def group_offload(pipe, device: str, torch, use_stream: bool) -> None:
    """diffusers' block-level group offload of every component but the VAE, one block per group.
    A component whose blocks are not its direct children (T5: encoder.block; CLIP: text_model.
    encoder.layers) names the modules leading to them (`block_modules`): diffusers groups only
    direct ModuleList children, and would hold such an encoder on the card whole (T5-XXL: 8.9 GiB)."""
    from diffusers.hooks import apply_group_offloading

    options = dict(onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type="block_level",
                   num_blocks_per_group=1, use_stream=use_stream)
    for name, component in pipe.components.items():
        if name == "vae" or not isinstance(component, torch.nn.Module):
            continue
        apply_group_offloading(component, block_modules=block_parents(component, torch) or None, **options)
    pipe.vae.to(device)  # small; grouped VAE decodes with streams misbehave when tiled


def block_parents(module, torch) -> list[str]:
    """Names of the modules between `module` and its shallowest lists of blocks, when those lists
    are not its direct children; [] when they are (FLUX's transformer) or it has none."""
    lists = (torch.nn.ModuleList, torch.nn.Sequential)
    if any(isinstance(child, lists) for child in module.children()):
        return []
    names: set[str] = set()
    for path, sub in module.named_modules():
        if not path or not isinstance(sub, lists):
            continue
        parts = path.split(".")
        if not any(isinstance(module.get_submodule(".".join(parts[:i])), lists) for i in range(1, len(parts))):
            names.update(parts[:-1])
    return sorted(names)


def apply_vae(pipe, mode: str) -> None:
    vae = getattr(pipe, "vae", None)
    if vae is None or mode == "none":
        return
    vae.enable_slicing()  # tiling decodes image by image too
    if mode == "tiling":
        blocks = len(vae.config.block_out_channels)
        vae.tile_sample_min_size = min(vae.tile_sample_min_size, VAE_TILE)
        vae.tile_latent_min_size = vae.tile_sample_min_size // 2 ** (blocks - 1)
        vae.enable_tiling()
