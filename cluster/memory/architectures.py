"""Model architectures as data: configs/architectures/{name}.yaml -> `Architecture`.

Each file gives a pipeline's components as their libraries build them (class, config), which of
their module lists are the repeated blocks, the working memory the planner assumes, and `sizes`:
the parameter counts that building those configs gives. The planner reads `sizes` without torch;
`count_on_meta` rebuilds the components on the meta device (no memory) to check them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.config_files import bundled_config
from cluster.errors import ImageGenError

Role = Literal["denoiser", "text_encoder", "vae", "other"]


class ComponentArch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    class_name: str = Field(alias="class", description="The diffusers or transformers class.")
    library: Literal["diffusers", "transformers"]
    role: Role = "other"
    config: dict[str, Any] = Field(default_factory=dict)
    blocks: tuple[str, ...] = Field((), description="Dotted paths of the module lists of repeated blocks.")


class Activations(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reference_pixels: int = Field(1024 * 1024, gt=0)
    denoiser_gb_per_image: float = Field(ge=0)
    vae_decode_gb_per_image: float = Field(ge=0)
    text_encoder_gb: float = Field(0.3, ge=0)
    vae_tile_pixels: int = Field(512 * 512, gt=0)


class ComponentSize(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    params: int = Field(ge=0)
    largest_block: int = Field(0, ge=0)


class Architecture(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    pipeline: str
    dtype_bytes: int = Field(2, ge=1)
    components: dict[str, ComponentArch]
    activations: Activations
    sizes: dict[str, ComponentSize]


def architecture_path(name: str) -> Path:
    return bundled_config(f"architectures/{name}.yaml")


def load_architecture(name: str) -> Architecture:
    path = architecture_path(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Architecture(name=name, **raw)
    except FileNotFoundError:
        raise ImageGenError("IMG_018", f"no architecture {name!r} (looked for {str(path)!r}).") from None
    except (OSError, yaml.YAMLError, ValidationError, TypeError) as exc:
        raise ImageGenError("IMG_018", f"architecture {name!r}: {' '.join(str(exc).split())[:300]}") from None


def count_on_meta(arch: Architecture) -> dict[str, ComponentSize]:
    """Each component built from its config on the meta device: parameter counts, no memory."""
    import importlib

    import torch

    sizes = {}
    for name, component in arch.components.items():
        module = importlib.import_module(component.library)
        cls = getattr(module, component.class_name)
        with torch.device("meta"):
            if component.library == "transformers":
                model = cls(cls.config_class(**component.config))
            else:
                model = cls(**component.config)
        largest = 0
        for path in component.blocks:
            blocks = model
            for part in path.split("."):
                blocks = getattr(blocks, part)
            largest = max([largest, *(sum(p.numel() for p in b.parameters()) for b in blocks)])
        sizes[name] = ComponentSize(params=sum(p.numel() for p in model.parameters()), largest_block=largest)
    return sizes
