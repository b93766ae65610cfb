"""An architecture's components counted on the meta device (no memory), held as the memory plans
hold them: their parameters, their largest repeated block and what lies outside the blocks (what
group offload keeps onloaded), and what an fp8 plan keeps in the compute dtype: counted by casting
the meta model with the product's own `cast_to_fp8` (diffusers' layerwise casting, its skip
patterns and the model's full-precision layers), never assumed as a share.

`configs/architectures/*.yaml: sizes` are these counts; tests/test_memory_plans.py recomputes them.

    python -m actors.core.meta_count flux1-schnell     # prints the `sizes:` block of that file
"""

from __future__ import annotations

import sys

from cluster.planning.memory.architectures import Architecture, ComponentSize, load_architecture


def count_on_meta(arch: Architecture) -> dict[str, ComponentSize]:
    import torch

    from actors.core.memory_apply import cast_to_fp8
    from models.real_size import instantiate

    compute = {2: torch.bfloat16, 4: torch.float32}[arch.dtype_bytes]
    sizes = {}
    for name, component in arch.components.items():
        with torch.device("meta"):
            model = instantiate(component, compute, torch)
        params = sum(p.numel() for p in model.parameters())
        blocks = [sum(p.numel() for p in block.parameters()) for block in repeated_blocks(model, component.blocks)]
        cast_to_fp8(model, compute, torch)
        kept = sum(p.numel() for p in model.parameters() if p.dtype != torch.float8_e4m3fn)
        sizes[name] = ComponentSize(params=params, largest_block=max(blocks, default=0),
                                    outside_blocks=params - sum(blocks), fp8_kept=kept)
    return sizes


def transformer_flops(arch: Architecture, width: int, height: int, text_tokens: int) -> float:
    """FLOPs of one denoising step of `arch`'s transformer for one image: its forward run on the
    meta device under torch's FlopCounterMode, so every Linear counts over the tokens it really
    sees (modulation and time embeddings once per image, the double blocks' image weights over
    the image tokens and their text weights over the text tokens) and attention over both."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models.real_size import instantiate

    component = arch.components["transformer"]
    config = component.config
    image_tokens = (height // 16) * (width // 16)  # VAE x8, then 2x2 latent patches per token
    with torch.device("meta"), torch.no_grad():
        model = instantiate(component, torch.bfloat16, torch)
        inputs = dict(hidden_states=torch.empty(1, image_tokens, config["in_channels"], dtype=torch.bfloat16),
                      encoder_hidden_states=torch.empty(1, text_tokens, config["joint_attention_dim"],
                                                        dtype=torch.bfloat16),
                      pooled_projections=torch.empty(1, config["pooled_projection_dim"], dtype=torch.bfloat16),
                      timestep=torch.empty(1, dtype=torch.bfloat16), img_ids=torch.empty(image_tokens, 3),
                      txt_ids=torch.empty(text_tokens, 3), return_dict=False)
        if config.get("guidance_embeds"):
            inputs["guidance"] = torch.empty(1, dtype=torch.bfloat16)
        with FlopCounterMode(display=False) as counter:
            model(**inputs)
    return float(counter.get_total_flops())


def repeated_blocks(model, paths: tuple[str, ...]) -> list:
    found = []
    for path in paths:
        blocks = model
        for part in path.split("."):
            blocks = getattr(blocks, part)
        found.extend(blocks)
    return found


def sizes_yaml(sizes: dict[str, ComponentSize]) -> str:
    lines = ["sizes:"]
    for name, size in sizes.items():
        fields = ", ".join(f"{key}: {value}" for key, value in size.model_dump().items())
        lines.append(f"  {name}: {{{fields}}}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(sizes_yaml(count_on_meta(load_architecture(sys.argv[1]))))
