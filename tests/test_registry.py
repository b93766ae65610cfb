"""The model registry, availability checks and the plan's count semantics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cluster.errors import ImageGenError
from cluster.planning.planner import make_plan
from cluster.planning.request import parse_request
from models import availability
from models.hub_cli import hub_command
from models.registry import load_registry

SEED_MODELS = {"imagen4-ultra", "imagen4-fast", "imagen3", "flux-schnell", "photo-flux"}


def test_bundled_config_lists_the_seed_models_and_the_tiny_ones(registry):
    ids = set(registry.ids())
    assert SEED_MODELS <= ids and {"tiny-flux", "tiny-sd"} <= ids
    flux = registry.get("flux-schnell")
    assert (flux.backend, flux.source, flux.pipeline) == ("diffusers", "black-forest-labs/FLUX.1-schnell", "FluxPipeline")
    assert (flux.steps, flux.guidance, flux.dtype) == (4, 0.0, "bfloat16")
    assert flux.rate_limit.requests_per_minute == 30 and flux.rate_limit.concurrent_limit == 8
    assert flux.rate_limit.queue_strategy == "load_balanced"
    ultra = registry.get("imagen4-ultra")
    assert (ultra.rate_limit.requests_per_minute, ultra.rate_limit.concurrent_limit) == (10, 3)
    assert ultra.rate_limit.queue_strategy == "priority_based"
    assert registry.get("imagen4-fast").rate_limit.queue_strategy == "round_robin"
    assert not registry.get("tiny-flux").auto_select and registry.get("tiny-flux").random_weights


def write_config(tmp_path: Path, models: dict, **extra) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models, **extra}))
    return path


@pytest.mark.parametrize("content", [
    "models: [1, 2]",
    "not: yaml: at: all: [",
    "models: {}",
    "models:\n  x:\n    backend: diffusers\n",  # no source
    "models:\n  x:\n    backend: imagen\n    api_style: predict\n",  # no api_model
    "models:\n  x:\n    backend: diffusers\n    source: a/b\n    colour: red\n",  # unknown key
    "models:\n  x:\n    backend: diffusers\n    source: a/b\n    steps: -1\n",
    "smart_selection: {realism: [ghost]}\nmodels:\n  x:\n    backend: diffusers\n    source: a/b\n",
])
def test_bad_config_files_are_img_018(tmp_path, content):
    path = tmp_path / "models.yaml"
    path.write_text(content)
    with pytest.raises(ImageGenError) as info:
        load_registry(path)
    assert info.value.code == "IMG_018"


def test_missing_config_file_is_img_018(tmp_path):
    with pytest.raises(ImageGenError) as info:
        load_registry(tmp_path / "nope.yaml")
    assert info.value.code == "IMG_018"


def test_any_diffusers_pipeline_is_a_config_entry(tmp_path):
    path = write_config(tmp_path, {"sdxl-turbo": {
        "backend": "diffusers", "source": "stabilityai/sdxl-turbo", "pipeline": "AutoPipelineForText2Image",
        "steps": 1, "guidance": 0.0, "width": 512, "height": 512, "dtype": "float16",
    }})
    spec = load_registry(path).get("sdxl-turbo")
    assert spec.source_kind() == ("hub", "stabilityai/sdxl-turbo")
    assert spec.fetch_command() == f"{hub_command()} download stabilityai/sdxl-turbo"


def test_missing_hub_weights_name_the_fetch_command(registry):
    check = availability.check(registry.get("flux-schnell"))
    assert not check.ok and check.code == "IMG_002"
    assert f"{hub_command()} download black-forest-labs/FLUX.1-schnell" in check.reason


FLUX_INDEX = {"_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
              "tokenizer": ["transformers", "CLIPTokenizer"], "text_encoder": ["transformers", "CLIPTextModel"],
              "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
              "image_encoder": [None, None]}


def hub_snapshot_of(hub: Path, files: dict[str, str]) -> Path:
    """A Hugging Face cache entry laid out as huggingface_hub writes it: blobs, and symlinks to them."""
    repo = hub / "models--black-forest-labs--FLUX.1-schnell"
    snap = repo / "snapshots" / "abc123"
    for number, (name, text) in enumerate(files.items()):
        blob = repo / "blobs" / f"blob{number}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(text)
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("abc123")
    return snap


def full_flux_snapshot() -> dict[str, str]:
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": "w", "diffusion_pytorch_model-00002-of-00002.safetensors": "w"}
    index = {"metadata": {}, "weight_map": {"a.weight": next(iter(shards)), "b.weight": list(shards)[1]}}
    files = {"model_index.json": json.dumps(FLUX_INDEX), "scheduler/scheduler_config.json": "{}",
             "tokenizer/tokenizer_config.json": "{}", "text_encoder/config.json": "{}",
             "text_encoder/model.safetensors": "w", "transformer/config.json": "{}",
             "transformer/diffusion_pytorch_model.safetensors.index.json": json.dumps(index),
             "vae/config.json": "{}", "vae/diffusion_pytorch_model.safetensors": "w"}
    files.update({f"transformer/{name}": text for name, text in shards.items()})
    return files


def test_cached_hub_weights_are_found_without_network(registry, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    snap = hub_snapshot_of(tmp_path / "hub", full_flux_snapshot())
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert availability.hub_snapshot("black-forest-labs/FLUX.1-schnell") == snap
    assert availability.check(registry.get("flux-schnell")).ok


@pytest.mark.parametrize("drop, named", [
    (["transformer/diffusion_pytorch_model-00002-of-00002.safetensors"],
     "transformer/diffusion_pytorch_model-00002-of-00002.safetensors"),
    (["vae/diffusion_pytorch_model.safetensors"], "vae/diffusion_pytorch_model.safetensors"),
    ([f for f in full_flux_snapshot() if f.startswith("text_encoder/")], "text_encoder/"),
])
def test_a_partial_hub_download_is_not_weights_present(registry, tmp_path, monkeypatch, drop, named):
    # `huggingface-cli download ... --include model_index.json`, or one interrupted mid-shard, leaves
    # model_index.json in the cache while the pipeline cannot load.
    import huggingface_hub.constants as hf_constants

    files = {name: text for name, text in full_flux_snapshot().items() if name not in drop}
    hub_snapshot_of(tmp_path / "hub", files)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    check = availability.check(registry.get("flux-schnell"))
    assert (check.ok, check.code) == (False, "IMG_002")
    assert named in check.reason
    assert f"{hub_command()} download black-forest-labs/FLUX.1-schnell" in check.reason


def test_a_broken_blob_link_is_missing(registry, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    snap = hub_snapshot_of(tmp_path / "hub", full_flux_snapshot())
    (snap / "vae/diffusion_pytorch_model.safetensors").resolve().unlink()  # the blob, not the link
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    check = availability.check(registry.get("flux-schnell"))
    assert not check.ok and "vae/diffusion_pytorch_model.safetensors" in check.reason


def test_local_folder_source(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    path = write_config(tmp_path, {"mine": {"backend": "diffusers", "source": str(folder)}})
    spec = load_registry(path).get("mine")
    assert not availability.check(spec).ok
    (folder / "model_index.json").write_text("{}")
    assert availability.check(spec).ok


def test_a_local_pipeline_missing_a_components_weights_is_not_available(tmp_path):
    import shutil

    from models.tiny import tiny_pipeline_dir

    folder = tmp_path / "my-model"
    shutil.copytree(tiny_pipeline_dir("tiny-flux", tmp_path / "cache"), folder)  # save_pretrained's layout
    path = write_config(tmp_path, {"mine": {"backend": "diffusers", "source": str(folder)}})
    spec = load_registry(path).get("mine")
    assert availability.check(spec).ok
    (folder / "text_encoder_2" / "model.safetensors").unlink()
    check = availability.check(spec)
    assert (check.ok, check.code) == (False, "IMG_002")
    assert "text_encoder_2/model.safetensors" in check.reason and "save_pretrained" in check.reason


def test_a_variant_is_looked_for_by_its_own_file_names(tmp_path):
    folder = tmp_path / "my-model"
    index = {"_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "vae": ["diffusers", "AutoencoderKL"], "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    for name in ("vae", "transformer"):
        (folder / name).mkdir()
        (folder / name / "config.json").write_text("{}")
        (folder / name / "diffusion_pytorch_model.safetensors").write_text("w")
    (folder / "model_index.json").write_text(json.dumps(index))
    path = write_config(tmp_path, {"mine": {"backend": "diffusers", "source": str(folder), "variant": "fp16"}})
    spec = load_registry(path).get("mine")
    check = availability.check(spec)
    assert not check.ok and "fp16" in check.reason  # diffusers refuses a variant no component has
    # The transformer's fp16 weights are sharded; its index names a shard that is not there.
    shard_index = {"weight_map": {"a": "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                                  "b": "diffusion_pytorch_model.fp16-00002-of-00002.safetensors"}}
    (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.fp16.json").write_text(json.dumps(shard_index))
    (folder / "transformer" / "diffusion_pytorch_model.fp16-00001-of-00002.safetensors").write_text("w")
    check = availability.check(spec)
    assert not check.ok and "transformer/diffusion_pytorch_model.fp16-00002-of-00002.safetensors" in check.reason
    (folder / "transformer" / "diffusion_pytorch_model.fp16-00002-of-00002.safetensors").write_text("w")
    assert availability.check(spec).ok  # the vae has no fp16 files: diffusers loads its plain ones


def test_imagen_without_credentials_is_img_007(registry):
    check = availability.check(registry.get("imagen4-fast"))
    assert (check.ok, check.code) == (False, "IMG_007")


def test_imagen_with_api_key_is_available(registry, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k-123")
    assert availability.check(registry.get("imagen4-fast")).ok


def _request(registry, tmp_path, **raw):
    base = {"image_prompt": "a red fox", "folder_name": "out"}
    base.update(raw)
    return parse_request(base, registry, cwd=tmp_path)


def test_count_means_per_model_with_a_list(registry, tmp_path):
    plan = make_plan(_request(registry, tmp_path, image_count="1", models="tiny-flux,tiny-sd", seed="10"), registry)
    assert [t.model for t in plan.tasks] == ["tiny-flux", "tiny-sd"]
    assert [t.index for t in plan.tasks] == [0, 1]
    assert [t.seed for t in plan.tasks] == [10, 11]
    plan = make_plan(_request(registry, tmp_path, image_count="3", models="tiny-flux,tiny-sd", seed="0"), registry)
    assert [t.model for t in plan.tasks] == ["tiny-flux"] * 3 + ["tiny-sd"] * 3


def test_comparison_mode_gives_every_model_the_same_seeds(registry, tmp_path):
    plan = make_plan(_request(registry, tmp_path, image_count="2", models="tiny-flux,tiny-sd", seed="5",
                              enable_comparison="true"), registry)
    seeds = {m: [t.seed for t in plan.tasks if t.model == m] for m in plan.models}
    assert seeds == {"tiny-flux": [5, 6], "tiny-sd": [5, 6]}


def test_overrides_beat_model_defaults(registry, tmp_path):
    plan = make_plan(_request(registry, tmp_path, models="tiny-flux", width="32", height="48", steps="3"), registry)
    task = plan.tasks[0]
    assert (task.width, task.height, task.steps, task.guidance) == (32, 48, 3, 0.0)


def test_auto_with_nothing_available_is_img_002_and_never_picks_tiny(registry, tmp_path):
    with pytest.raises(ImageGenError) as info:
        make_plan(_request(registry, tmp_path), registry)
    assert info.value.code == "IMG_002"
    assert "tiny-flux" in info.value.message  # tells how to run the demo


def test_explicit_model_without_weights_is_img_002(registry, tmp_path):
    with pytest.raises(ImageGenError) as info:
        make_plan(_request(registry, tmp_path, models="flux-schnell"), registry)
    assert info.value.code == "IMG_002"


def test_auto_spreads_the_count_over_the_smart_picks(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    plan = make_plan(_request(registry, tmp_path, image_prompt="a portrait photo, 85mm lens", image_count="3"),
                     registry)
    assert plan.models == ["imagen4-ultra"]  # photo-flux has no weights here
    assert [t.model for t in plan.tasks] == ["imagen4-ultra"] * 3
    plan = make_plan(_request(registry, tmp_path, image_prompt="an oil painting of a ship", image_count="3"), registry)
    assert plan.models == ["imagen4-fast"]  # flux-schnell has no weights; imagen4-fast is the other artistic pick


def test_the_fetch_command_is_one_the_installed_hub_provides(monkeypatch):
    import shutil
    import sys
    from importlib import metadata

    from models import hub_cli

    program = load_registry().get("flux-schnell").fetch_command().split()[0]
    beside = str(Path(sys.executable).parent)  # the console scripts of this environment
    assert shutil.which(program, path=beside) is not None, f"{program} is not installed with huggingface_hub"

    class OldHub:  # a huggingface_hub from before `hf` (< 0.34)
        entry_points = [metadata.EntryPoint("huggingface-cli", "x:y", "console_scripts")]

    monkeypatch.setattr(metadata, "distribution", lambda name: OldHub)
    hub_cli.hub_command.cache_clear()
    try:
        assert hub_cli.download_command("a/b", "f.safetensors") == "huggingface-cli download a/b f.safetensors"
    finally:
        hub_cli.hub_command.cache_clear()


def test_aliases_name_one_model_each(tmp_path):
    import yaml

    from cluster.errors import ImageGenError
    from models.registry import load_registry

    registry = load_registry()
    assert registry.resolve("dall-e-3").id == "flux-schnell" and registry.resolve("flux-schnell").id == "flux-schnell"
    assert registry.resolve("dall-e-9") is None
    doc = yaml.safe_load(registry.path.read_text())
    doc["models"]["tiny-flux"]["aliases"] = ["dall-e-3"]  # already flux-schnell's
    clash = tmp_path / "models.yaml"
    clash.write_text(yaml.safe_dump(doc))
    with pytest.raises(ImageGenError) as refused:
        load_registry(clash)
    assert refused.value.code == "IMG_018" and "dall-e-3" in refused.value.message
