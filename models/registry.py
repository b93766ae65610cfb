"""configs/models.yaml -> typed `ModelSpec`s, through one loader.

Importable without torch: the driver validates requests and plans with these specs
before any heavy import happens.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cluster.config_files import bundled_config, parse_yaml
from cluster.errors import ImageGenError
from models.hub_cli import download_command

DEFAULT_MODELS_FILE = bundled_config("models.yaml")
BUILTIN_PREFIX = "builtin:"


# cluster.planning.memory.planner.PLAN_NAMES, best first (a test keeps the two in step)
MemoryPlanName = Literal["auto", "resident", "fp8-storage", "model-offload", "group-offload", "sequential-offload"]


class SpeedOptions(BaseModel):
    """How a replica makes its pipeline fast, applied at load and recorded in the report.
    `auto` applies what the device supports and records why the rest was skipped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="Regional torch.compile of the denoiser's repeated blocks, warmed up at load (CUDA).")
    quantize: Literal["auto", "none", "fp8", "int8"] = Field(
        "auto", description="Dynamic quantization of the denoiser's linear layers through torchao (fp8: CUDA 8.9+).")
    attention_backend: str = Field("auto", description="diffusers' attention dispatcher backend, e.g. native, flash.")
    cache: Literal["auto", "none", "first-block", "taylorseer"] = Field(
        "auto", description="diffusers' step cache, for many-step models (it trades some detail for speed).")
    cache_threshold: float = Field(0.08, gt=0, description="First-block cache: relative change below which a step reuses the cache.")


class PromptEncoder(BaseModel):
    """One text encoder that reads a model's prompt, and the most tokens of it that it reads (it
    cuts the rest). The longest of a registry's encoders sets the longest prompt accepted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="What it is called in reports, e.g. CLIP-L, T5-XXL, Imagen.")
    max_tokens: int = Field(ge=1, description="Tokens it reads, special tokens included; the rest is cut.")
    tokenizer: str | None = Field(
        None, description="diffusers: the pipeline's attribute holding its tokenizer (tokenizer, tokenizer_2), "
                          "which counts a prompt's tokens on the replica; without one they are estimated.")
    length_arg: str | None = Field(
        None, description="The pipeline-call argument that sets how many tokens it reads (FLUX's "
                          "max_sequence_length); call_args must give it, equal to max_tokens.")


class RateLimit(BaseModel):
    """Appendix B of the design card; `None` means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: float | None = Field(None, gt=0, description="Request starts allowed per rolling minute.")
    concurrent_limit: int | None = Field(None, ge=1, description="Calls to this model in flight at once, across replicas.")
    queue_strategy: Literal["priority_based", "round_robin", "load_balanced"] = Field(
        "round_robin", description="How this model's queued calls are ordered and spread (see cluster.engine.scheduler)."
    )


class ModelSpec(BaseModel):
    """One model the cluster can run: how to load it, what it needs, what it is good at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="The name users pass to --models.")
    aliases: tuple[str, ...] = Field(
        (), description="Other names API clients may call it by (e.g. dall-e-3), so clients with fixed model names work.")
    backend: Literal["diffusers", "imagen", "custom"]
    description: str = ""
    factory: str | None = Field(
        None, description="custom backend: 'module:callable' returning an object with generate(tasks, call_id)."
    )
    remote: bool | None = Field(
        None, description="Calls a remote service instead of local hardware; default: true for imagen only."
    )

    # diffusers backend
    source: str | None = Field(None, description="HF repo id, local folder, or builtin:<name>.")
    pipeline: str = Field("AutoPipelineForText2Image", description="diffusers pipeline class name.")
    revision: str | None = None
    variant: str | None = None
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="dtype on CUDA; CPU uses float32.")
    call_args: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments of the pipeline call.")
    weights: Literal["real", "random"] = "real"
    family: str | None = Field(
        None, description="Base model family LoRA adapters are made for (configs/adapters.yaml); None: it takes none.")

    # imagen backend
    api_style: Literal["predict", "generate_content"] | None = None
    api_model: str | None = None
    request_timeout_s: float = Field(120, gt=0, description="Timeout of one remote request (halved after each network error).")

    # generation defaults (the request may override steps and size)
    steps: int | None = Field(None, ge=1)
    guidance: float | None = Field(None, ge=0)
    width: int = Field(1024, ge=8)
    height: int = Field(1024, ge=8)
    max_side: int = Field(2048, ge=16, description="Largest width or height it is asked for (the API refuses more).")

    # resources
    gpus: float = Field(1, ge=0, description="GPUs a replica needs when the cluster has GPUs.")
    gpu_memory_gb: float = Field(0, ge=0, description="GPU memory the loaded weights take.")
    gpu_memory_per_image_gb: float = Field(0, ge=0, description="Extra GPU memory per image of a batch.")
    max_batch_size: int = Field(1, ge=1, description="Most images in one pipeline call or API request.")
    architecture: str | None = Field(
        None, description="configs/architectures/<name>.yaml: the model's components, for memory plans without weights.")
    memory_plan: MemoryPlanName = Field(
        "auto", description="How a replica holds the model: auto (the first plan that fits the card) or a plan name.")
    allow_fp8: bool = Field(True, description="Whether a memory plan may store weights in float8 (slight quality cost).")
    speedups: SpeedOptions = Field(default_factory=SpeedOptions, description="Compilation, quantization, attention, caching.")
    prompt_encoders: tuple[PromptEncoder, ...] = Field(
        (), description="What reads the prompt and how many tokens of it (the report says what each cut).")
    prompt_languages: tuple[str, ...] = Field(
        ("en",), description="Prompt languages the model reads (ISO 639-1); others get an English translation.")
    cpus: float = Field(1, gt=0, description="Logical CPUs a replica holds.")

    # selection (appendix A)
    speed: int = Field(3, ge=1, le=5)
    quality: int = Field(3, ge=1, le=5)
    specialization: str = ""
    strengths: tuple[str, ...] = ()
    cost_per_image_usd: float = Field(0.0, ge=0)
    auto_select: bool = Field(True, description="Whether `--models auto` may pick this model.")
    fetch_hint: str | None = Field(None, description="Command that fetches the weights; derived for HF repos.")

    rate_limit: RateLimit = Field(default_factory=RateLimit)

    @model_validator(mode="after")
    def _check_backend_fields(self) -> "ModelSpec":
        if self.backend == "diffusers" and not self.source:
            raise ValueError("a diffusers model needs `source`")
        if self.backend == "imagen" and not (self.api_style and self.api_model):
            raise ValueError("an imagen model needs `api_style` and `api_model`")
        if self.backend == "custom" and (not self.factory or ":" not in self.factory):
            raise ValueError("a custom model needs `factory: module:callable`")
        for encoder in self.prompt_encoders:
            if encoder.length_arg and self.call_args.get(encoder.length_arg) != encoder.max_tokens:
                raise ValueError(f"prompt encoder {encoder.name} reads {encoder.max_tokens} tokens, so call_args."
                                 f"{encoder.length_arg} must be {encoder.max_tokens} (it sets what the pipeline reads)")
        return self

    @property
    def prompt_tokens(self) -> int | None:
        """The most tokens of a prompt any of its encoders reads (None: not declared)."""
        return max((e.max_tokens for e in self.prompt_encoders), default=None)

    @property
    def is_local(self) -> bool:
        """Runs on the cluster's own hardware (needs GPU placement), as opposed to a remote API."""
        if self.remote is not None:
            return not self.remote
        return self.backend != "imagen"

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"

    def source_kind(self) -> tuple[Literal["builtin", "local", "hub"], str]:
        """The one place a `source` string is parsed."""
        return parse_source(self.source or "")

    def fetch_command(self) -> str | None:
        if self.fetch_hint:
            return self.fetch_hint
        kind, value = self.source_kind() if self.source else ("", "")
        if kind == "hub":
            return download_command(value)
        return None

    def batch_size_for(self, gpu_memory_free_gb: float | None) -> int:
        """Images per pipeline call: the spec's cap, lowered to what the card's spare memory holds."""
        if gpu_memory_free_gb is None or self.gpu_memory_per_image_gb <= 0:
            return self.max_batch_size
        spare = gpu_memory_free_gb - self.gpu_memory_gb
        return max(1, min(self.max_batch_size, int(spare // self.gpu_memory_per_image_gb)))


def parse_source(source: str) -> tuple[Literal["builtin", "local", "hub"], str]:
    if source.startswith(BUILTIN_PREFIX):
        return "builtin", source[len(BUILTIN_PREFIX):]
    if source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists():
        return "local", str(Path(source).expanduser())
    return "hub", source


class Registry:
    """The models of one config file, by id, and the smart strategy's picks."""

    def __init__(self, specs: dict[str, ModelSpec], path: Path, smart_selection: dict[str, tuple[str, ...]] | None = None):
        self._specs = specs
        self.path = path
        self.smart_selection = smart_selection or {}

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._specs

    def __iter__(self):
        return iter(self._specs.values())

    def ids(self) -> list[str]:
        return list(self._specs)

    def resolve(self, name: str) -> ModelSpec | None:
        """The model `name` is the id or an alias of; None when it names none."""
        if name in self._specs:
            return self._specs[name]
        return next((s for s in self._specs.values() if name in s.aliases), None)

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            close = difflib.get_close_matches(model_id, self._specs, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ImageGenError(
                "IMG_002",
                f"model {model_id!r} is not in {self.path.name!r}.{hint} "
                f"Known models: {', '.join(map(repr, self._specs))}.",
            ) from None


def load_registry(path: str | Path | None = None) -> Registry:
    path = Path(path) if path else DEFAULT_MODELS_FILE
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageGenError(
            "IMG_018", f"model config {str(path)!r} does not exist; pass an existing file to --config."
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ImageGenError("IMG_018", f"model config {str(path)!r} cannot be read as YAML: {_one_line(exc)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict) or not raw["models"]:
        raise ImageGenError("IMG_018", f"model config {str(path)!r} needs a non-empty `models:` mapping of id -> entry.")
    specs: dict[str, ModelSpec] = {}
    for model_id, entry in raw["models"].items():
        if not isinstance(entry, dict):
            raise ImageGenError("IMG_018", f"{path.name!r}: entry {model_id!r} must be a mapping.")
        try:
            specs[str(model_id)] = ModelSpec(id=str(model_id), **entry)
        except (ValidationError, TypeError) as exc:
            raise ImageGenError("IMG_018", f"{path.name!r}: model {model_id!r}: {_pydantic_summary(exc)}") from None
    names = [name for spec in specs.values() for name in spec.aliases]
    clashing = sorted({n for n in names if names.count(n) > 1 or n in specs or n == "auto"})
    if clashing:
        raise ImageGenError("IMG_018", f"{path.name!r}: aliases must name one model each and differ from every "
                                       f"model id and `auto`: {', '.join(map(repr, clashing))}.")
    rules = raw.get("smart_selection") or {}
    if not isinstance(rules, dict) or any(not isinstance(v, list) for v in rules.values()):
        raise ImageGenError("IMG_018", f"{path.name!r}: `smart_selection` maps a category to a list of model ids.")
    unknown = sorted({m for ids in rules.values() for m in ids} - set(specs))
    if unknown:
        raise ImageGenError(
            "IMG_018", f"{path.name!r}: `smart_selection` names unknown models: {', '.join(map(repr, unknown))}."
        )
    return Registry(specs, path, {str(k): tuple(v) for k, v in rules.items()})


def _pydantic_summary(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "entry"
            parts.append(f"{where}: {err['msg']}")
        return "; ".join(parts)
    return _one_line(exc)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
