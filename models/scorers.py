"""configs/scoring.yaml -> typed `ScorerSpec`s, and whether a scorer's weights are here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cluster.config_files import bundled_config, load_config
from cluster.errors import ImageGenError
from models.registry import BUILTIN_PREFIX
from models.hub_cli import download_command

DEFAULT_SCORING_FILE = bundled_config("scoring.yaml")
NO_SCORER = "none"


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cos_low: float = Field(0.15, description="Cosine mapped to alignment 0.")
    cos_high: float = Field(0.35, description="Cosine mapped to alignment 1.")


class AestheticEmbedding(BaseModel):
    """The CLIP model whose image embeddings an aesthetic head was trained on. A head rates only
    those: another model's embeddings (even of the same size) give plausible but wrong ratings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str = Field(description="open_clip model name, local-dir:<folder>, or builtin:tiny-clip.")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or a local weights file.")
    hub_repo: str | None = Field(None, description="HF repo the tag resolves to (for the offline cache check).")

    @property
    def label(self) -> str:
        return f"{self.architecture}/{self.pretrained}" if self.pretrained else self.architecture

    def missing(self) -> str | None:
        return missing_open_clip(self.architecture, self.pretrained, self.hub_repo)


class ScorerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    description: str = ""
    architecture: str = Field(description="open_clip model name, or builtin:tiny-clip.")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or a local weights file.")
    hub_repo: str | None = Field(None, description="HF repo the tag resolves to (for the offline cache check).")
    weights: Literal["real", "random"] = "real"
    aesthetic_weights: str | None = None
    aesthetic_embedding: AestheticEmbedding | None = Field(
        None, description="The CLIP model the aesthetic head was trained on; without it no aesthetic score.")
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
        return missing_open_clip(self.architecture, self.pretrained, self.hub_repo)

    @property
    def aesthetic_on_own_embeddings(self) -> bool:
        """The head was trained on this scorer's own model: its image embeddings serve both."""
        emb = self.aesthetic_embedding
        return emb is not None and (emb.architecture, emb.pretrained) == (self.architecture, self.pretrained)

    def missing_aesthetic(self) -> str | None:
        if not self.aesthetic_weights:
            return "no aesthetic predictor configured (scorers.<id>.aesthetic_weights in scoring.yaml)"
        if not Path(self.aesthetic_weights).expanduser().is_file():
            return f"aesthetic predictor weights {self.aesthetic_weights} not found"
        emb = self.aesthetic_embedding
        if emb is None:
            return ("the aesthetic predictor does not say which CLIP model it was trained on "
                    "(scorers.<id>.aesthetic_embedding in scoring.yaml); it rates no other model's embeddings")
        if self.aesthetic_on_own_embeddings:
            return None
        missing = emb.missing()
        if missing:
            return f"the aesthetic predictor was trained on {emb.label} image embeddings and those weights are missing: {missing}"
        return None


def missing_open_clip(architecture: str, pretrained: str | None, hub_repo: str | None) -> str | None:
    """Why an open_clip model cannot load here without a download, or None when it can."""
    if architecture.startswith(BUILTIN_PREFIX):
        return None
    if architecture.startswith("local-dir:"):
        folder = Path(architecture[len("local-dir:"):]).expanduser()
        return None if (folder / "open_clip_config.json").is_file() else f"{folder} holds no open_clip model"
    if pretrained and Path(pretrained).expanduser().is_file():
        return None
    if hub_repo:
        if cached_open_clip_file(hub_repo) is not None:
            return None
        return (f"CLIP weights {hub_repo} are not in the Hugging Face cache; fetch them once with "
                f"`{download_command(hub_repo, 'open_clip_model.safetensors')}`")
    return f"CLIP weights {pretrained!r} are not a local file"


def cached_open_clip_file(hub_repo: str) -> Path | None:
    """The open_clip weights file of `hub_repo` in the local Hugging Face cache (never fetched)."""
    from models.availability import hub_file

    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = hub_file(hub_repo, name)
        if found is not None:
            return found
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
    def build(raw: dict) -> ScoringConfig:
        scorers = {str(k): {"id": str(k), **(v or {})} for k, v in (raw.get("scorers") or {}).items()}
        config = ScoringConfig(default=raw.get("default", "vit-l-14"), scorers=scorers)
        if config.default != NO_SCORER and config.default not in config.scorers:
            raise ValueError(f"default {config.default!r} is not a scorer.")
        return config

    return load_config(path, DEFAULT_SCORING_FILE, "scoring config", build)
