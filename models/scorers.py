"""configs/scoring.yaml -> typed `ScorerSpec`s, and whether a scorer's weights are here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.config_files import bundled_config
from cluster.errors import ImageGenError
from models.registry import BUILTIN_PREFIX

DEFAULT_SCORING_FILE = bundled_config("scoring.yaml")
NO_SCORER = "none"


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cos_low: float = Field(0.15, description="Cosine mapped to alignment 0.")
    cos_high: float = Field(0.35, description="Cosine mapped to alignment 1.")


class ScorerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    description: str = ""
    architecture: str = Field(description="open_clip model name, or builtin:tiny-clip.")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or a local weights file.")
    hub_repo: str | None = Field(None, description="HF repo the tag resolves to (for the offline cache check).")
    weights: Literal["real", "random"] = "real"
    aesthetic_weights: str | None = None
    calibration: Calibration = Field(default_factory=Calibration)
    gpus: float = Field(0.1, ge=0, le=1)
    gpu_memory_gb: float = Field(2, ge=0)
    cpus: float = Field(1, gt=0)
    batch_size: int = Field(32, ge=1)

    @property
    def builtin(self) -> str | None:
        return self.architecture[len(BUILTIN_PREFIX):] if self.architecture.startswith(BUILTIN_PREFIX) else None

    def missing_weights(self) -> str | None:
        """Why this scorer cannot load here, or None when its weights are present."""
        if self.builtin:
            return None
        if self.architecture.startswith("local-dir:"):
            folder = Path(self.architecture[len("local-dir:"):]).expanduser()
            return None if (folder / "open_clip_config.json").is_file() else f"{folder} holds no open_clip model"
        if self.pretrained and Path(self.pretrained).expanduser().is_file():
            return None
        if self.hub_repo:
            from models.availability import hub_file

            if any(hub_file(self.hub_repo, name) for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")):
                return None
            return (f"CLIP weights {self.hub_repo} are not in the Hugging Face cache; fetch them once with "
                    f"`huggingface-cli download {self.hub_repo} open_clip_model.safetensors`")
        return f"CLIP weights {self.pretrained!r} are not a local file"

    def missing_aesthetic(self) -> str | None:
        if not self.aesthetic_weights:
            return "no aesthetic predictor configured (scorers.<id>.aesthetic_weights in scoring.yaml)"
        if not Path(self.aesthetic_weights).expanduser().is_file():
            return f"aesthetic predictor weights {self.aesthetic_weights} not found"
        return None


class ScoringConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str = "vit-l-14"
    scorers: dict[str, ScorerSpec]

    def get(self, scorer_id: str) -> ScorerSpec:
        try:
            return self.scorers[scorer_id]
        except KeyError:
            known = ", ".join([*self.scorers, NO_SCORER])
            raise ImageGenError("IMG_027", f"--scorer {scorer_id!r} is unknown; known: {known}.") from None


def load_scoring(path: str | Path | None = None) -> ScoringConfig:
    path = Path(path) if path else DEFAULT_SCORING_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        scorers = {str(k): {"id": str(k), **(v or {})} for k, v in (raw.get("scorers") or {}).items()}
        config = ScoringConfig(default=raw.get("default", "vit-l-14"), scorers=scorers)
    except (OSError, yaml.YAMLError, ValidationError, AttributeError, TypeError) as exc:
        raise ImageGenError("IMG_018", f"scoring config {path}: {' '.join(str(exc).split())[:300]}") from None
    if config.default != NO_SCORER and config.default not in config.scorers:
        raise ImageGenError("IMG_018", f"scoring config {path}: default {config.default!r} is not a scorer.")
    return config
