"""Tiny LoRA adapters for `tiny-flux`, built locally and loaded like real ones.

peft injects LoRA matrices into a transformer of tiny-flux's own configuration, initialised from a
fixed seed with non-zero values (peft's default leaves B at zero, which would change nothing), and
they are written as diffusers' `FluxPipeline.save_lora_weights` writes a LoRA
(`pytorch_lora_weights.safetensors`, its peft config beside the matrices): the file a LoRA from
the Hub is, read by the same `load_lora_weights`.
Every machine builds the same bytes, so the sha256 an image records is the same everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.tiny import TINY_VERSION, _build_once, tiny_pipeline_dir

# name -> (seed, rank, modules it adapts, how strongly): two looks that differ in rank and targets,
# so switching between them exercises hot-swap padding and layers one of them leaves alone
TINY_ADAPTERS = {
    "tiny-style": (1, 4, ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                          "to_add_out", "proj_mlp", "proj_out"), 3.0),
    "tiny-grain": (2, 2, ("to_q", "to_v", "add_q_proj", "add_v_proj"), 8.0),
}
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_VERSION = "v1"


def tiny_adapter_file(name: str, cache_root: Path) -> Path:
    """The adapter's .safetensors file, building it on first use."""
    if name not in TINY_ADAPTERS:
        raise KeyError(name)
    target = cache_root / "tiny" / f"{name}-{TINY_VERSION}-{ADAPTER_VERSION}"
    pipeline = tiny_pipeline_dir("tiny-flux", cache_root)
    return _build_once(target, WEIGHT_NAME, lambda scratch: _build(name, pipeline, scratch)) / WEIGHT_NAME


def _build(name: str, pipeline: Path, folder: Path) -> None:
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    seed, rank, targets, gain = TINY_ADAPTERS[name]
    config = FluxTransformer2DModel.load_config(pipeline / "transformer")
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config)
    transformer.to_empty(device="cpu")
    lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False)
    torch.manual_seed(seed)
    transformer.add_adapter(lora)  # init_lora_weights=False: A and B both drawn, from the seed above
    state = {key: (value * gain).contiguous() for key, value in get_peft_model_state_dict(transformer).items()}
    # written as diffusers' save_lora_weights writes it (`transformer.`-prefixed keys, the config as
    # `lora_adapter_metadata`), but with one metadata entry: safetensors orders several at random,
    # and the same bytes everywhere give the same sha256 everywhere
    config = {f"transformer.{k}": v for k, v in lora.to_dict().items() if k != "peft_version"}
    config["transformer.target_modules"] = sorted(lora.target_modules)
    save_file({f"transformer.{k}": v for k, v in state.items()}, str(folder / WEIGHT_NAME),
              metadata={"lora_adapter_metadata": json.dumps(config, indent=2, sort_keys=True)})
