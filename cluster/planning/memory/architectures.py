"""Model architectures as data: configs/architectures/{name}.yaml -> `Architecture`.

Each file gives a pipeline's components as their libraries build them (class, config), which of
their module lists are the repeated blocks, the working memory the planner assumes, and `sizes`:
the parameter counts that building those configs gives, and how an fp8 plan and group offload hold
them. The planner reads `sizes` without torch; `actors.core.meta_count` rebuilds the components on the
meta device (no memory), holds them as the plans do, and counts, to check them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.config_files import bundled_config, parse_yaml
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
    # what one cached prompt embedding holds (FLUX: T5's 512 tokens x 4096, CLIP's pooled 768)
    prompt_tokens: int = Field(512, ge=0)
    prompt_width: int = Field(4096, ge=0)
    pooled_width: int = Field(768, ge=0)


class ComponentSize(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    params: int = Field(ge=0)
    largest_block: int = Field(0, ge=0, description="Parameters of its largest repeated block.")
    outside_blocks: int = Field(0, ge=0, description="Parameters in none of its repeated blocks (embeddings, "
                                                     "final norms): what group offload keeps onloaded beside blocks.")
    fp8_kept: int | None = Field(None, ge=0, description="Parameters an fp8 plan keeps in the compute dtype "
                                                         "(diffusers' skip patterns, the model's full-precision "
                                                         "layers); None: not counted, planned as all kept.")


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
        raw = parse_yaml(path.read_text(encoding="utf-8"))
        return Architecture(name=name, **raw)
    except FileNotFoundError:
        raise ImageGenError("IMG_018", f"no architecture {name!r} (looked for {str(path)!r}).") from None
    except (OSError, yaml.YAMLError, ValidationError, TypeError) as exc:
        raise ImageGenError("IMG_018", f"architecture {name!r}: {' '.join(str(exc).split())[:300]}") from None
