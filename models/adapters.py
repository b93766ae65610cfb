"""configs/adapters.yaml -> typed `AdapterSpec`s, and what a request's `--adapters` value means.

Importable without torch: requests are validated and plans made with these specs before any
heavy import. Every refusal is IMG_031, naming the adapter and the fix.
"""

from __future__ import annotations

import difflib
import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.config_files import bundled_config, load_config
from cluster.errors import ImageGenError
from models.hub_cli import download_command
from models.registry import ModelSpec, parse_source

DEFAULT_ADAPTERS_FILE = bundled_config("adapters.yaml")
CODE = "IMG_031"
# A scale outside this range is a typo, not a style: LoRA strengths in use run from about -1 to 1.5.
MAX_SCALE = 4.0


class AdapterSpec(BaseModel):
    """One LoRA adapter: where its weights are, which models it fits, how it is applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="The name requests pass to --adapters.")
    description: str = ""
    source: str = Field(description="HF repo id (with weight_name), a local .safetensors path, or builtin:<name>.")
    weight_name: str | None = Field(None, description="The .safetensors file inside a Hugging Face repo.")
    revision: str | None = None
    family: str = Field(description="The base model family it fits (a model's `family`).")
    scale: float = Field(1.0, ge=-MAX_SCALE, le=MAX_SCALE, description="Strength when a request gives none.")
    trigger_words: tuple[str, ...] = Field((), description="Added to the prompt the model receives.")
    license: str = ""
    fetch_hint: str | None = Field(None, description="Command that fetches the weights; derived for HF repos.")

    @model_validator(mode="after")
    def _check_source(self) -> "AdapterSpec":
        kind, _ = self.source_kind()
        if kind == "hub" and not self.weight_name:
            raise ValueError("a Hugging Face source needs `weight_name`, the .safetensors file to load")
        return self

    def source_kind(self) -> tuple[Literal["builtin", "local", "hub"], str]:
        return parse_source(self.source)

    def fetch_command(self) -> str | None:
        if self.fetch_hint:
            return self.fetch_hint
        kind, value = self.source_kind()
        return download_command(value, self.weight_name) if kind == "hub" else None


class FamilySettings(BaseModel):
    """What a replica of one family's models reserves for adapters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_gb: float = Field(1.0, gt=0, description="GiB of adapter weights a replica keeps loaded (LRU beyond).")
    hotswap_rank: int = Field(32, ge=1, description="Compiled replicas: the rank hot-swap slots are padded to.")
    hotswap_slots: int = Field(2, ge=1, description="Compiled replicas: adapters one call may combine.")


class AdapterRegistry:
    def __init__(self, specs: dict[str, AdapterSpec], families: dict[str, FamilySettings], max_per_request: int,
                 path: Path):
        self._specs = specs
        self.families = families
        self.max_per_request = max_per_request
        self.path = path

    def __iter__(self):
        return iter(self._specs.values())

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._specs

    def get(self, adapter_id: str) -> AdapterSpec:
        try:
            return self._specs[adapter_id]
        except KeyError:
            close = difflib.get_close_matches(adapter_id, self._specs, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(map(repr, self._specs)) or "none"
            raise ImageGenError(CODE, f"adapter {adapter_id!r} is not in {self.path.name!r}.{hint} "
                                      f"Known adapters: {known}.") from None

    def fitting(self, spec: ModelSpec) -> list[AdapterSpec]:
        return [a for a in self._specs.values() if fits(a, spec)]

    def settings_for(self, spec: ModelSpec) -> FamilySettings | None:
        """The family's adapter settings when `spec` takes adapters at all."""
        return self.families.get(spec.family) if spec.family else None


def fits(adapter: AdapterSpec, spec: ModelSpec) -> bool:
    return spec.backend == "diffusers" and spec.family == adapter.family


def load_adapters(path: str | Path | None = None) -> AdapterRegistry:
    """`path`, else $KAMUI_ADAPTERS_CONFIG, else the bundled configs/adapters.yaml (read once)."""
    if path is None:
        from cluster import env

        chosen = Path(env.adapters_config() or DEFAULT_ADAPTERS_FILE)
        return _cached(chosen, _stamp(chosen))
    return load_config(path, DEFAULT_ADAPTERS_FILE, "adapter config", lambda raw: _build(raw, Path(path)))


def _stamp(path: Path) -> tuple[int, int] | None:
    """What says the file changed: a long-lived process (the front door, the API) reads an edited
    registry on its next request instead of the one it started with."""
    try:
        stat = path.stat()
    except OSError:
        return None  # load_config says what is wrong with it
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=4)
def _cached(path: Path, stamp: tuple[int, int] | None) -> AdapterRegistry:
    return load_config(path, DEFAULT_ADAPTERS_FILE, "adapter config", lambda raw: _build(raw, path))


def _build(raw: dict, path: Path) -> AdapterRegistry:
    unknown = set(raw) - {"settings", "families", "adapters"}
    if unknown:
        raise ValueError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    settings = raw.get("settings") or {}
    max_per_request = int(settings.get("max_per_request", 3))
    if max_per_request < 1 or set(settings) - {"max_per_request"}:
        raise ValueError("`settings` takes max_per_request (a whole number >= 1)")
    families = {str(k): FamilySettings(**(v or {})) for k, v in (raw.get("families") or {}).items()}
    specs = {str(k): AdapterSpec(id=str(k), **(v or {})) for k, v in (raw.get("adapters") or {}).items()}
    orphans = sorted({s.family for s in specs.values()} - set(families))
    if orphans:
        raise ValueError(f"adapters fit families that `families:` does not list (give each a budget_gb): "
                         f"{', '.join(orphans)}")
    return AdapterRegistry(specs, families, max_per_request, path)


# --- what a request asks for ---------------------------------------------------------------

Choice = tuple[str, float]  # (adapter id, scale)


def parse_adapters(value: str | None, registry: AdapterRegistry, flag: str = "--adapters") -> tuple[Choice, ...]:
    """`ID[:SCALE][,ID[:SCALE]...]` -> ((id, scale), ...); a missing scale is the adapter's default.
    Empty or `none`: no adapters."""
    text = (value or "").strip()
    if not text or text.lower() == "none":
        return ()
    choices: list[Choice] = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        adapter_id, sep, scale_text = item.partition(":")
        spec = registry.get(adapter_id.strip())
        scale = _scale(scale_text, spec, flag) if sep else spec.scale
        if any(c[0] == spec.id for c in choices):
            raise ImageGenError(CODE, f"{flag} names {spec.id!r} twice; give it once with the scale you want.")
        choices.append((spec.id, scale))
    if not choices:
        raise ImageGenError(CODE, f"{flag} {value!r} names no adapter; give ID[:SCALE][,ID[:SCALE]...] or none.")
    if len(choices) > registry.max_per_request:
        raise ImageGenError(CODE, f"{flag} names {len(choices)} adapters; a request combines at most "
                                  f"{registry.max_per_request} (settings.max_per_request in {registry.path.name}).")
    return tuple(choices)


def _scale(text: str, spec: AdapterSpec, flag: str) -> float:
    try:
        scale = float(text.strip())
    except ValueError:
        scale = math.nan
    if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
        raise ImageGenError(CODE, f"{flag}: scale {text.strip()!r} of {spec.id!r} must be a number from "
                                  f"{-MAX_SCALE:g} to {MAX_SCALE:g} (e.g. {spec.id}:0.8).")
    return scale


def format_choices(choices: tuple[Choice, ...]) -> str:
    """The `--adapters` value that means `choices` (reports, journal keys, PNG reproduction)."""
    return ",".join(f"{adapter_id}:{scale:g}" for adapter_id, scale in choices)


def check_fit(choices: tuple[Choice, ...], spec: ModelSpec, registry: AdapterRegistry) -> None:
    """IMG_031 when an adapter does not fit `spec` (another family, or a model that takes none)."""
    for adapter_id, _ in choices:
        adapter = registry.get(adapter_id)
        if fits(adapter, spec):
            continue
        if spec.backend != "diffusers" or not spec.family:
            why = f"model {spec.id!r} takes no adapters (it is not a local diffusers model of a known family)"
        else:
            why = f"it fits {adapter.family} models and {spec.id!r} is a {spec.family} model"
        fitting = ", ".join(sorted(f"{adapter.id}" for adapter in registry if fits(adapter, spec))) or "none"
        raise ImageGenError(CODE, f"adapter {adapter_id!r} cannot be applied to {spec.id!r}: {why}. "
                                  f"Adapters that fit {spec.id!r}: {fitting}.")
    if choices and registry.settings_for(spec) is None:
        raise ImageGenError(CODE, f"model {spec.id!r} (family {spec.family}) has no adapter settings in "
                                  f"{registry.path.name} `families:`.")


def with_trigger_words(prompt: str, words: tuple[str, ...]) -> str:
    """The prompt a model receives: `prompt` with the trigger words it does not already hold."""
    missing = [w for w in dict.fromkeys(words) if w.lower() not in prompt.lower()]
    return ", ".join([prompt, *missing]) if missing else prompt
