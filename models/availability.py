"""Can a model run here, now? Checked on the driver, before any actor starts.

Cheap checks only: a local folder or a Hugging Face cache snapshot (never a download) with
`model_index.json` and the weight files of every component it names, or Google credentials in
the environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cluster import env
from cluster.errors import ImageGenError
from models.registry import ModelSpec


@dataclass(frozen=True)
class Availability:
    model: str
    ok: bool
    code: str | None = None
    reason: str = ""

    def raise_if_missing(self) -> None:
        if not self.ok:
            raise ImageGenError(self.code or "IMG_002", self.reason)


def check(spec: ModelSpec) -> Availability:
    if spec.backend == "imagen":
        return _check_google(spec)
    if spec.backend == "custom":
        return _check_factory(spec)
    kind, value = spec.source_kind()
    if kind == "builtin":
        from models.real_size import ARCH_BUILDERS  # torch-free: only names
        from models.tiny import BUILDERS

        if value in BUILDERS or value in ARCH_BUILDERS:
            return Availability(spec.id, True)
        return Availability(spec.id, False, "IMG_002", f"model {spec.id!r}: no builtin pipeline named {value!r}.")
    if kind == "local":
        if not (Path(value) / "model_index.json").is_file():
            return Availability(
                spec.id, False, "IMG_002",
                f"model {spec.id!r}: {value} holds no diffusers pipeline (no model_index.json); "
                "point `source` at a folder saved with save_pretrained.",
            )
        missing = missing_weight_files(Path(value), spec.variant)
        if not missing:
            return Availability(spec.id, True)
        fetch = spec.fetch_command()
        how = f"fetch them with `{fetch}`" if fetch else "save the pipeline again with save_pretrained"
        return Availability(
            spec.id, False, "IMG_002",
            f"model {spec.id!r}: {value} is missing weight files the pipeline loads: {', '.join(missing)}; {how}.",
        )
    fetch = spec.fetch_command()
    snapshot = hub_snapshot(value, spec.revision)
    if snapshot is not None:
        missing = missing_weight_files(snapshot, spec.variant)
        if not missing:
            return Availability(spec.id, True)
        return Availability(
            spec.id, False, "IMG_002",
            f"model {spec.id!r}: the Hugging Face cache holds only part of {value} (an interrupted or filtered "
            f"download); missing: {', '.join(missing)}. Runs never download: complete it with `{fetch}`.",
        )
    return Availability(
        spec.id, False, "IMG_002",
        f"model {spec.id!r}: weights for {value} are not in the Hugging Face cache and runs never download. "
        f"Fetch them once with `{fetch}` (accept the model's license on huggingface.co first if it is gated), "
        "or set `source` to a local folder.",
    )


# diffusers models save `diffusion_pytorch_model.*`, transformers models `model.safetensors` /
# `pytorch_model.bin`; either may be one file or an index naming its shards.
WEIGHT_BASES = ("diffusion_pytorch_model", "model", "pytorch_model")
WEIGHT_FORMATS = ("safetensors", "bin")
# Components that are configuration only (class names as model_index.json gives them).
WEIGHTLESS_CLASSES = ("Scheduler", "Tokenizer", "TokenizerFast", "FeatureExtractor", "ImageProcessor", "Processor")


def missing_weight_files(folder: Path, variant: str | None = None) -> list[str]:
    """The files (relative to `folder`) that loading the pipeline there needs and cannot find; [] when
    complete. Follows diffusers' choice: per component the `variant`'s files when it has any, else
    the plain ones; a variant that no component has is missing as a whole."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"model_index.json ({type(exc).__name__})"]
    missing: list[str] = []
    variant_found = False
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or None in entry:
            continue  # settings such as `_class_name`, and optional components left out ([null, null])
        component = folder / name
        if not component.is_dir():
            missing.append(f"{name}/")
            continue
        if str(entry[1]).endswith(WEIGHTLESS_CLASSES):
            continue
        if not (component / "config.json").is_file():
            missing.append(f"{name}/config.json")
        found_variant, lacking = _component_weights(component, variant, str(entry[0]))
        variant_found |= found_variant
        missing.extend(f"{name}/{file}" for file in lacking)
    if variant and not variant_found and not missing:
        missing.append(f"any `{variant}` weight file (e.g. */diffusion_pytorch_model.{variant}.safetensors)")
    return missing


def _component_weights(component: Path, variant: str | None, library: str) -> tuple[bool, list[str]]:
    """(whether the variant's files were used, the files missing) for one model component."""
    if variant:
        used, lacking = _weights_in(component, variant)
        if used:
            return True, lacking
    used, lacking = _weights_in(component, None)
    if used:
        return False, lacking
    base = "model" if library == "transformers" else "diffusion_pytorch_model"
    return False, [f"{base}{'.' + variant if variant else ''}.safetensors (or .bin, or a sharded *.index.json)"]


def _weights_in(component: Path, variant: str | None) -> tuple[bool, list[str]]:
    """(whether any weights of this naming are there, the shards its index names that are not)."""
    tag = f".{variant}" if variant else ""
    for base in WEIGHT_BASES:
        for fmt in WEIGHT_FORMATS:
            if (component / f"{base}{tag}.{fmt}").is_file():
                return True, []
    for base in WEIGHT_BASES:
        for fmt in WEIGHT_FORMATS:
            index_file = component / f"{base}.{fmt}.index{tag}.json"
            if index_file.is_file():
                try:
                    shards = set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values())
                except (OSError, ValueError, KeyError, TypeError, AttributeError):
                    return True, [f"{index_file.name} (unreadable)"]
                return True, sorted(s for s in shards if not (component / s).is_file())
    return False, []


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a repo in the local Hugging Face cache, or None; never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # malformed repo ids are simply "not cached"
        return None
    return Path(found) if isinstance(found, str) else None


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a diffusers repo, or None."""
    index = hub_file(repo_id, "model_index.json", revision)
    return index.parent if index is not None else None


def _check_factory(spec: ModelSpec) -> Availability:
    import importlib.util

    module = (spec.factory or "").partition(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return Availability(spec.id, True)
    return Availability(spec.id, False, "IMG_002", f"model {spec.id!r}: module {module!r} of its factory is not importable.")


def _check_google(spec: ModelSpec) -> Availability:
    creds = env.google_credentials()
    if creds.present:
        return Availability(spec.id, True)
    return Availability(
        spec.id, False, "IMG_007",
        f"model {spec.id!r} runs on Google Vertex AI and no credentials are set: export GOOGLE_API_KEY "
        "(Vertex express mode), or GOOGLE_CLOUD_PROJECT with Application Default Credentials "
        "(`gcloud auth application-default login`).",
    )
