"""A model's component sizes, without loading it: from the safetensors headers of its weights when
they are on this machine, else from its architecture file (configs/architectures/), else unknown
(the planner then uses the model's declared `gpu_memory_gb`).

A safetensors file starts with an 8-byte little-endian length and a JSON header naming every
tensor's dtype and shape, so a 24 GB transformer is sized by reading a few hundred kilobytes.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from cluster.planning.memory.architectures import Activations, load_architecture

# model_index.json class names -> the role a component plays in a generation
_ROLES = (("Tokenizer", "other"), ("Scheduler", "other"), ("Processor", "other"), ("FeatureExtractor", "other"),
          ("Transformer", "denoiser"), ("UNet", "denoiser"), ("Autoencoder", "vae"), ("VQModel", "vae"),
          ("TextModel", "text_encoder"), ("EncoderModel", "text_encoder"), ("T5", "text_encoder"),
          ("Gemma", "text_encoder"), ("Qwen", "text_encoder"))
# `...blocks.12.attn.to_q.weight` -> the block `...blocks.12`
_BLOCK = re.compile(r"^(.*?\.\d+)\.")


@dataclass(frozen=True)
class Component:
    name: str
    role: str
    params: int
    largest_block: int = 0
    outside_blocks: int = 0  # parameters in none of its numbered blocks
    fp8_kept: int | None = None  # parameters an fp8 plan keeps in the compute dtype; None: not counted


@dataclass(frozen=True)
class ModelSizes:
    components: tuple[Component, ...]
    activations: Activations
    source: str  # where the sizes were read: "weights: <folder>" or "architecture: <name>"
    dtype_bytes: int = 2
    notes: tuple[str, ...] = field(default_factory=tuple)

    def of(self, role: str) -> list[Component]:
        return [c for c in self.components if c.role == role]


def role_of(class_name: str) -> str:
    for marker, role in _ROLES:
        if marker in class_name:
            return role
    return "other"


def read_header(path: Path) -> dict:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 2**20:  # no real header is this large: not a safetensors file
            raise ValueError(f"{path.name}: header of {length} bytes")
        return json.loads(handle.read(length))


def safetensors_sizes(folder: Path) -> tuple[int, int, int] | None:
    """(parameters, of the largest numbered block, outside every numbered block) of the safetensors
    files in `folder`; None when it holds none."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    blocks: dict[str, int] = {}
    for path in files:
        for name, tensor in read_header(path).items():
            if name == "__metadata__":
                continue
            count = math.prod(tensor.get("shape") or [1])
            total += count
            match = _BLOCK.match(name)
            if match:
                blocks[match.group(1)] = blocks.get(match.group(1), 0) + count
    return total, max(blocks.values(), default=0), total - sum(blocks.values())


def weights_sizes(folder: Path) -> list[Component] | None:
    """Component sizes of a saved diffusers pipeline, from its files; None when a component with
    weights has no safetensors (a .bin cannot be sized without unpickling it)."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    components = []
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or None in entry:
            continue
        role = role_of(str(entry[1]))
        part = folder / name
        if not any(part.glob("*.safetensors")) and not any(part.glob("*.bin")):
            continue  # configuration only: schedulers, tokenizers
        try:
            found = safetensors_sizes(part)
        except (OSError, ValueError, struct.error):
            return None
        if found is None:
            return None
        components.append(Component(name, role, *found))
    return components or None


def architecture_sizes(name: str) -> ModelSizes:
    arch = load_architecture(name)
    components = tuple(Component(n, arch.components[n].role, s.params, s.largest_block, s.outside_blocks, s.fp8_kept)
                       for n, s in arch.sizes.items())
    return ModelSizes(components, arch.activations, f"architecture: {name}", arch.dtype_bytes)


def model_sizes(architecture: str | None, weights_folder: Path | None, fallback: Activations | None = None
                ) -> ModelSizes | None:
    """The sizes the planner uses: the weights' own when present (they are what loads), with the
    architecture's working-memory figures; else the architecture's; else None."""
    arch = architecture_sizes(architecture) if architecture else None
    if weights_folder is not None:
        found = weights_sizes(weights_folder)
        activations = arch.activations if arch else fallback
        if found and activations is not None:
            if arch:
                found = [with_counted_fp8(c, arch) for c in found]
            return ModelSizes(tuple(found), activations, f"weights: {weights_folder}",
                              arch.dtype_bytes if arch else 2)
    return arch


def with_counted_fp8(c: Component, arch: ModelSizes) -> Component:
    """`c` (sized from its weights) with the parameters an fp8 plan keeps, as counted for the same
    component of its architecture (in proportion, when the weights hold a few more or fewer); a
    component the architecture does not have stays uncounted (planned as kept whole)."""
    counted = next((a for a in arch.components if a.name == c.name and a.fp8_kept is not None and a.params), None)
    if counted is None:
        return c
    return replace(c, fp8_kept=min(c.params, math.ceil(counted.fp8_kept * c.params / counted.params)))
