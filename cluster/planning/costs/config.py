"""configs/costs.yaml -> `CostConfig`: card prices per hour, the CPU price, remote list prices."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cluster.config_files import bundled_config, load_config

DEFAULT_COSTS_FILE = bundled_config("costs.yaml")


class CardPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(min_length=1, description="Part of the card's name as CUDA reports it.")
    gpu_hour_usd: float = Field(ge=0)


class CostConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_gpu_hour_usd: float = Field(1.0, ge=0, description="A card no entry of `cards` matches.")
    cpu_hour_usd: float = Field(0.05, ge=0, description="A replica on CPUs.")
    cards: tuple[CardPrice, ...] = ()
    remote: dict[str, float] = Field(default_factory=dict, description="List price per image, by model id.")
    default_seconds_per_image: float = Field(5.0, gt=0, description="Estimates without history: a local image.")
    default_load_seconds: float = Field(60.0, ge=0, description="Estimates without history: a cold replica's load.")

    def hour_rate(self, card: str) -> tuple[float, str]:
        """(USD per hour, what it is) for a replica on `card` ("cpu" or the CUDA device name)."""
        if not card or card == "cpu":
            return self.cpu_hour_usd, "CPU"
        for entry in self.cards:
            if entry.match.lower() in card.lower():
                return entry.gpu_hour_usd, card
        return self.default_gpu_hour_usd, f"{card} (default rate)"

    def list_price(self, model_id: str, fallback: float) -> float:
        return self.remote.get(model_id, fallback)


def load_costs(path: str | Path | None = None) -> CostConfig:
    return load_config(path, DEFAULT_COSTS_FILE, "cost config", lambda raw: CostConfig(**raw))
