"""`GenerationRequest`: every input validated once, at the edge; everything inside trusts it.

Inputs arrive as strings (command-line flags, the Action's environment variables, batch
manifest entries), so the parsers here take strings, turn each bad value into an
``IMG_0xx`` error that names the flag and the fix, and never raise anything else.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from cluster import env
from cluster.errors import ImageGenError
from models.adapters import CODE as ADAPTER_CODE, check_fit, format_choices, load_adapters, parse_adapters
from cluster.planning.bounds import (MAX_IMAGE_COUNT, MAX_PARALLEL, MAX_SEED, MAX_SIDE, MAX_STEPS,  # noqa: F401
                                     MIN_SIDE, SIDE_MULTIPLE)
from models.prompt_length import max_prompt_chars
from models.registry import Registry

STRATEGIES = ("smart", "sequential", "parallel")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}

Strategy = Literal["smart", "sequential", "parallel"]


class GenerationRequest(BaseModel):
    """One validated run. Field names follow the Action's inputs (dashes become underscores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_prompt: str = Field(description="The prompt, stripped; from 1 character to the longest prompt a "
                                          "configured model reads (models.prompt_length).")
    folder_name: Path = Field(description="Absolute output folder.")
    image_count: int = Field(1, ge=1, le=MAX_IMAGE_COUNT, description="Images per listed model, or in all with auto.")
    models: tuple[str, ...] = Field((), description="Explicit model ids; empty means `auto`.")
    generation_strategy: Strategy = "smart"
    enable_comparison: bool = False
    quality_threshold: float = Field(0.7, ge=0.0, le=1.0)
    max_parallel: int = Field(3, ge=1, le=MAX_PARALLEL)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Base seed; image k uses seed + k.")
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    address: str | None = Field(None, description="Ray cluster to join; None starts an embedded one.")
    config: Path | None = Field(None, description="models.yaml in use; None is the bundled one.")
    upload_uri: str | None = Field(None, description="gs://bucket/prefix to upload images to; None: configs/output.yaml.")
    signed_urls: bool | None = Field(None, description="Signed instead of public URLs; None: configs/output.yaml.")
    scorer: str | None = Field(None, description="CLIP scorer id from configs/scoring.yaml, or none; None: its default.")
    memory_plan: str | None = Field(None, description="A memory plan for every local model; None: each model's own.")
    no_resume: bool = Field(False, description="Discard an interrupted earlier run's journal instead of resuming it.")
    budget_usd: float | None = Field(None, gt=0, description="Most the run may spend, in US dollars.")
    budget_policy: Literal["degrade", "refuse"] = Field("degrade", description="A plan estimated over budget is "
                                                        "degraded (cheaper models, fewer images) or refused.")
    translate: str = Field("auto", description="auto, off, required, or a translator id of configs/translation.yaml.")
    adapters: tuple[tuple[str, float], ...] = Field((), description="LoRA adapters (id, scale) from configs/adapters.yaml.")
    debug: bool = False

    @property
    def models_input(self) -> str:
        return ",".join(self.models) if self.models else "auto"

    @property
    def adapters_input(self) -> str:
        """The --adapters value that means this request's adapters ("" for none)."""
        return format_choices(self.adapters)


def parse_request(raw: Mapping[str, Any], registry: Registry, cwd: Path | None = None) -> GenerationRequest:
    """Build a request from raw input values (strings or None), or raise ImageGenError.

    `raw` uses the Action's input names with underscores (`image_prompt`, `folder_name`, ...);
    a missing or None value takes the default.
    """
    cwd = cwd or env.working_dir()

    def get(name: str) -> str | None:
        value = raw.get(name)
        if value is None:
            return None
        return value if isinstance(value, str) else str(value)

    unknown = set(raw) - set(GenerationRequest.model_fields)
    if unknown:
        raise ImageGenError("IMG_011", f"unknown input(s): {', '.join(map(repr, sorted(unknown)))}.")

    fields: dict[str, Any] = {
        "image_prompt": parse_prompt(get("image_prompt"), max_prompt_chars(registry)),
        "folder_name": parse_folder(get("folder_name"), cwd),
        "image_count": parse_image_count(get("image_count")),
        "models": parse_models(get("models"), registry),
        "generation_strategy": parse_strategy(get("generation_strategy")),
        "enable_comparison": parse_bool_flag(get("enable_comparison")),
        "quality_threshold": parse_threshold(get("quality_threshold")),
        "max_parallel": parse_max_parallel(get("max_parallel")),
        "seed": _parse_int(get("seed"), "--seed", 0, MAX_SEED, "IMG_017"),
        "width": parse_side(get("width"), "--width"),
        "height": parse_side(get("height"), "--height"),
        "steps": _parse_int(get("steps"), "--steps", 1, MAX_STEPS, "IMG_017"),
        "address": parse_address(get("address")),
        "config": registry.path,
        "upload_uri": parse_upload_uri(get("upload_uri")),
        "scorer": parse_scorer(get("scorer")),
        "memory_plan": parse_memory_plan(get("memory_plan")),
        "signed_urls": None if not (get("signed_urls") or "").strip()
        else parse_bool_flag(get("signed_urls"), flag="--signed-urls", code="IMG_026"),
        "no_resume": parse_bool_flag(get("no_resume"), flag="--no-resume", code="IMG_011"),
        "budget_usd": parse_budget(get("budget_usd")),
        "budget_policy": parse_budget_policy(get("budget_policy")),
        "translate": parse_translate(get("translate")),
        "adapters": parse_adapters(get("adapters"), load_adapters()),
        "debug": parse_bool_flag(get("debug"), flag="--debug", code="IMG_011"),
    }
    check_adapters(fields, registry)
    return GenerationRequest(**fields)


def check_adapters(fields: dict, registry: Registry) -> None:
    """Adapters against the rest of the request: every model named must take them (IMG_031); a
    memory plan storing weights in float8 cannot (layerwise casting would cast the LoRA matrices)."""
    if not fields["adapters"]:
        return
    for model_id in fields["models"]:
        check_fit(fields["adapters"], registry.get(model_id), load_adapters())
    if fields["memory_plan"] == "fp8-storage":
        raise ImageGenError(ADAPTER_CODE, "--memory-plan fp8-storage cannot take --adapters: layerwise casting would store "
                                  "the LoRA matrices in float8 too, where they cannot compute; leave --memory-plan "
                                  "to auto (plans without fp8 storage are chosen) or name another plan.")


def parse_prompt(value: str | None, limit: int) -> str:
    """`limit`: the most characters, what the configured models' longest reader reads."""
    if value is None or not value.strip():
        raise ImageGenError("IMG_009", "--image-prompt is empty; describe the image to generate.")
    prompt = value.strip()
    if "\x00" in prompt or any(ord(c) < 32 and c not in "\n\t\r" for c in prompt):
        raise ImageGenError("IMG_009", "--image-prompt holds control characters; pass plain text.")
    if len(prompt) > limit:
        raise ImageGenError(
            "IMG_009", f"--image-prompt is {len(prompt)} characters long; keep it within {limit} (the longest "
                       "prompt a configured model reads)."
        )
    return prompt


def parse_folder(value: str | None, cwd: Path) -> Path:
    if value is None or not value.strip():
        raise ImageGenError("IMG_016", "--folder-name is empty; name the folder the images go to, e.g. out/scene-1.")
    text = value.strip()
    if "\x00" in text or any(ord(c) < 32 for c in text):
        raise ImageGenError("IMG_016", "--folder-name holds control characters; use a plain path.")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # `~name` of a user this machine does not have
        raise ImageGenError("IMG_016", f"--folder-name {text!r} starts with ~ but names no user here; "
                                       "give a path without ~user.") from None
    if ".." in path.parts:
        raise ImageGenError("IMG_016", f"--folder-name {text!r} contains '..'; give a path without parent references.")
    folder = Path(os.path.normpath(path if path.is_absolute() else cwd / path))
    if folder == Path(folder.anchor):
        raise ImageGenError("IMG_016", "--folder-name is the filesystem root; name a folder of its own.")
    cwd_resolved = Path(os.path.normpath(cwd))
    if folder == cwd_resolved or folder in cwd_resolved.parents or folder == Path.home():
        raise ImageGenError(
            "IMG_016",
            f"--folder-name {text!r} is the working directory, one of its parents or the home directory, "
            "which a run would replace; name a folder of its own.",
        )
    if folder.exists() and not folder.is_dir():
        raise ImageGenError("IMG_016", f"--folder-name {text!r} exists and is not a folder.")
    return folder


# What a Ray address is made of (auto, local, HOST:PORT, [IPv6]:PORT, ray://HOST:PORT). Anything
# else is refused here, at the edge, rather than echoed back later by a failed connection.
_ADDRESS = re.compile(r"[A-Za-z0-9._~:/@%\[\]-]+")


def parse_address(value: str | None) -> str | None:
    text = (value or "").strip()
    if not text:
        return None
    if not _ADDRESS.fullmatch(text):
        raise ImageGenError("IMG_011", f"--address {text!r} is not a Ray address; give auto, HOST:PORT or ray://HOST:PORT.")
    return text


def parse_scorer(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    from models.scorers import NO_SCORER, load_scoring

    name = value.strip()
    if name != NO_SCORER:
        load_scoring().get(name)  # IMG_027 for an unknown id
    return name


def parse_budget(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    text = value.strip().lstrip("$")
    try:
        budget = float(text)
    except ValueError:
        budget = -1.0
    if not (budget > 0 and budget < 1e9):
        raise ImageGenError("IMG_029", f"--budget-usd {value!r} must be a positive amount of US dollars, e.g. 0.50.")
    return budget


def parse_budget_policy(value: str | None) -> str:
    text = (value or "").strip().lower() or "degrade"
    if text not in ("degrade", "refuse"):
        raise ImageGenError("IMG_029", f"--budget-policy {value!r} must be degrade or refuse.")
    return text


def parse_translate(value: str | None) -> str:
    text = (value or "").strip() or "auto"
    from models.translators import MODES, load_translation

    if text not in MODES:
        load_translation().get(text)  # IMG_030 for an unknown translator
    return text


def parse_memory_plan(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    from models.registry import MemoryPlanName

    name = value.strip()
    known = get_args(MemoryPlanName)
    if name not in known:
        raise ImageGenError("IMG_028", f"--memory-plan {name!r} is not a memory plan; use one of {', '.join(known)}.")
    return name


def parse_upload_uri(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    parse_gcs_uri(value)
    return value.strip()


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def parse_gcs_uri(uri: str) -> tuple[str, str]:
    """'gs://bucket/some/prefix/' -> ('bucket', 'some/prefix'); IMG_026 for anything else."""
    match = re.match(r"^gs://([^/]+)/?(.*)$", uri.strip())
    if not match or not _BUCKET.match(match.group(1)):
        raise ImageGenError("IMG_026", f"--upload-uri {uri!r} is not gs://BUCKET[/PREFIX] with a valid bucket name.")
    prefix = match.group(2).rstrip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ImageGenError("IMG_026", f"--upload-uri {uri!r} has an empty, '.' or '..' path segment.")
    return match.group(1), prefix


def parse_image_count(value: str | None) -> int:
    return _parse_int(value, "--image-count", 1, MAX_IMAGE_COUNT, "IMG_001", default=1)


def parse_models(value: str | None, registry: Registry) -> tuple[str, ...]:
    if value is None or not value.strip() or value.strip().lower() == "auto":
        return ()
    ids: list[str] = []
    for part in value.split(","):
        model_id = part.strip()
        if not model_id:
            continue
        if model_id.lower() == "auto":
            raise ImageGenError("IMG_002", "--models mixes `auto` with model ids; pass `auto` alone or a list of ids.")
        registry.get(model_id)  # IMG_002 with suggestions
        if model_id not in ids:  # a repeated id adds nothing: --image-count sets images per model
            ids.append(model_id)
    if not ids:
        raise ImageGenError("IMG_002", f"--models {value!r} names no model; pass `auto` or ids such as flux-schnell.")
    return tuple(ids)


def parse_strategy(value: str | None) -> Strategy:
    if value is None or not value.strip():
        return "smart"
    strategy = value.strip().lower()
    if strategy not in STRATEGIES:
        raise ImageGenError(
            "IMG_013", f"--generation-strategy {value!r} is unknown; use one of {', '.join(STRATEGIES)}."
        )
    return strategy  # type: ignore[return-value]


def parse_bool_flag(value: str | None, flag: str = "--enable-comparison", code: str = "IMG_015") -> bool:
    if value is None or not value.strip():
        return False
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ImageGenError(code, f"{flag} {value!r} is not a boolean; use true or false.")


def parse_threshold(value: str | None) -> float:
    if value is None or not value.strip():
        return 0.7
    try:
        threshold = float(value.strip())
    except ValueError:
        raise ImageGenError("IMG_012", f"--quality-threshold {value!r} is not a number; give 0.0 to 1.0.") from None
    if math.isnan(threshold) or not 0.0 <= threshold <= 1.0:
        raise ImageGenError("IMG_012", f"--quality-threshold {value.strip()!r} is out of range; give 0.0 to 1.0.")
    return threshold


def parse_max_parallel(value: str | None) -> int:
    return _parse_int(value, "--max-parallel", 1, MAX_PARALLEL, "IMG_014", default=3)


def parse_side(value: str | None, flag: str) -> int | None:
    side = _parse_int(value, flag, MIN_SIDE, MAX_SIDE, "IMG_017")
    if side is not None and side % SIDE_MULTIPLE:
        raise ImageGenError("IMG_017", f"{flag} {side} is not a multiple of {SIDE_MULTIPLE}; try {side // 16 * 16 or 16}.")
    return side


def _parse_int(value: str | None, flag: str, low: int, high: int, code: str, default: int | None = None) -> int | None:
    if value is None or not value.strip():
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImageGenError(code, f"{flag} {value!r} is not a whole number; give {low} to {high}.") from None
    if not low <= number <= high:
        raise ImageGenError(code, f"{flag} {number} is out of range; give {low} to {high}.")
    return number
