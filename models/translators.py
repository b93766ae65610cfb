"""configs/translation.yaml -> typed `TranslatorSpec`s, and whether a translator can run here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cluster.config_files import bundled_config, load_config
from cluster.errors import ImageGenError
from models.registry import parse_source
from models.hub_cli import download_command

DEFAULT_TRANSLATION_FILE = bundled_config("translation.yaml")
MODES = ("auto", "off", "required")


class TranslatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    description: str = ""
    backend: Literal["transformers", "gemini"]
    style: Literal["marian", "nllb"] = "marian"
    source: str | None = Field(None, description="HF repo id, local folder, or builtin:tiny-marian.")
    api_model: str | None = None
    weights: Literal["real", "random"] = "real"
    languages: tuple[str, ...] = ()
    max_new_tokens: int = Field(256, ge=8)
    request_timeout_s: float = Field(30, gt=0)

    def missing(self) -> str | None:
        """Why this translator cannot run here (weights or credentials absent), or None."""
        if self.backend == "gemini":
            from cluster import env

            return None if env.google_credentials().present else \
                f"translator {self.id!r} needs Google credentials (GOOGLE_API_KEY, or a project with ADC)"
        kind, value = parse_source(self.source or "")
        if kind == "builtin":
            return None if value == "tiny-marian" else f"translator {self.id!r}: no builtin {value!r}"
        if kind == "local":
            return None if (Path(value) / "config.json").is_file() else f"translator {self.id!r}: {value} holds no model"
        from models.availability import hub_file

        if hub_file(value, "config.json") is not None:
            return None
        return (f"translator {self.id!r}: {value} is not in the Hugging Face cache; fetch it once with "
                f"`{download_command(value)}`")


class TranslationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    auto: tuple[str, ...] = ()
    translators: dict[str, TranslatorSpec]

    def get(self, translator_id: str) -> TranslatorSpec:
        try:
            return self.translators[translator_id]
        except KeyError:
            known = ", ".join([*MODES, *self.translators])
            raise ImageGenError("IMG_030", f"--translate {translator_id!r} is unknown; use one of {known}.") from None


def load_translation(path: str | Path | None = None) -> TranslationConfig:
    def build(raw: dict) -> TranslationConfig:
        translators = {str(k): {"id": str(k), **(v or {})} for k, v in (raw.get("translators") or {}).items()}
        config = TranslationConfig(auto=tuple(raw.get("auto") or ()), translators=translators)
        unknown = [t for t in config.auto if t not in config.translators]
        if unknown:
            raise ValueError(f"`auto` names unknown translators {unknown}.")
        return config

    return load_config(path, DEFAULT_TRANSLATION_FILE, "translation config", build)
