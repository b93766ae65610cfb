"""LoRA adapters: the registry and what `--adapters` means (pure), and a resident tiny-flux pipeline
applying them (Ray-free): scale 1 changes the image, scale 0 and removal leave the base model's
pixels exactly, switching reloads nothing, the budget evicts, a compiled replica hot-swaps without
recompiling."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.errors import ImageGenError
from cluster.work import ImageTask
from models.adapters import load_adapters, parse_adapters


@pytest.fixture(scope="module")
def adapters():
    return load_adapters()


# --- the registry and the request's value --------------------------------------------------------

def test_an_adapter_without_a_scale_takes_its_default_and_scales_parse(adapters):
    assert parse_adapters("tiny-style", adapters) == (("tiny-style", 1.0),)
    assert parse_adapters(" tiny-style:0.5 , tiny-grain ", adapters) == (("tiny-style", 0.5), ("tiny-grain", 0.8))
    assert parse_adapters("none", adapters) == () == parse_adapters("", adapters) == parse_adapters(None, adapters)


@pytest.mark.parametrize("value, says", [
    ("tiny-styel", "'tiny-styel' is not in 'adapters.yaml'. Did you mean 'tiny-style'?"),
    ("tiny-style:strong", "scale 'strong' of 'tiny-style' must be a number from -4 to 4"),
    ("tiny-style:nan", "must be a number"),
    ("tiny-style:9", "must be a number"),
    ("tiny-style,tiny-style:0.5", "names 'tiny-style' twice"),
    (",", "names no adapter"),
])
def test_a_bad_adapters_value_is_img_031_naming_the_fix(adapters, value, says):
    with pytest.raises(ImageGenError) as info:
        parse_adapters(value, adapters)
    assert info.value.code == "IMG_031" and says in info.value.message


def test_an_adapter_of_another_family_or_a_model_without_adapters_is_refused(adapters, registry):
    from models.adapters import check_fit

    check_fit((("tiny-style", 1.0),), registry.get("tiny-flux"), adapters)
    for model, says in (("tiny-sd", "it fits tiny-flux models and 'tiny-sd' is a tiny-sd model"),
                        ("flux-schnell", "'flux-schnell' is a flux1 model"),
                        ("imagen4-fast", "'imagen4-fast' takes no adapters")):
        with pytest.raises(ImageGenError) as info:
            check_fit((("tiny-style", 1.0),), registry.get(model), adapters)
        assert info.value.code == "IMG_031" and says in info.value.message


def test_a_missing_adapter_names_the_command_that_fetches_it(tmp_path):
    from models.adapter_files import resolve

    path = tmp_path / "adapters.yaml"
    path.write_text("families: {flux1: {budget_gb: 1}}\nadapters:\n  water: {source: someone/flux-water, "
                    "weight_name: water.safetensors, family: flux1}\n  local: {source: /nowhere/x.safetensors, "
                    "family: flux1}\n", encoding="utf-8")
    registry = load_adapters(path)
    for choice, says in ((("water", 1.0), "download someone/flux-water water.safetensors`"),
                         (("local", 1.0), "/nowhere/x.safetensors does not exist")):
        with pytest.raises(ImageGenError) as info:
            resolve((choice,), registry, tmp_path)
        assert info.value.code == "IMG_031" and says in info.value.message


def test_a_long_lived_process_reads_an_edited_registry_on_its_next_request(tmp_path, monkeypatch):
    """The front door and the API live for days: an adapter added to the registry is there for the
    next request without a restart (the registry is cached per file version, not per process)."""
    path = tmp_path / "adapters.yaml"
    monkeypatch.setenv("KAMUI_ADAPTERS_CONFIG", str(path))
    entry = "  {}: {{source: builtin:tiny-style, family: tiny-flux}}\n"
    path.write_text("families: {tiny-flux: {budget_gb: 0.05}}\nadapters:\n" + entry.format("first"), encoding="utf-8")
    assert [s.id for s in load_adapters()] == ["first"]
    assert load_adapters() is load_adapters()  # unchanged: read once
    path.write_text(path.read_text(encoding="utf-8") + entry.format("second-look"), encoding="utf-8")
    assert parse_adapters("second-look:0.5", load_adapters()) == (("second-look", 0.5),)


def test_a_run_through_the_front_door_reads_the_clients_adapter_registry(tmp_path, monkeypatch):
    """The front door runs a client's `generate` in its own long-lived process: the registry the
    client named (KAMUI_ADAPTERS_CONFIG, relative to the client's folder) is the one its run reads,
    and `serve` carries it to its replica."""
    from cluster import env

    (tmp_path / "mine.yaml").write_text("families: {tiny-flux: {budget_gb: 0.05}}\nadapters:\n"
                                        "  client-look: {source: builtin:tiny-style, family: tiny-flux}\n",
                                        encoding="utf-8")
    monkeypatch.delenv("KAMUI_ADAPTERS_CONFIG", raising=False)  # the front door's own process: the bundled one
    assert "client-look" not in load_adapters()
    with env.overlay({"KAMUI_ADAPTERS_CONFIG": "mine.yaml"}, cwd=tmp_path):
        assert env.for_run()["KAMUI_ADAPTERS_CONFIG"] == "mine.yaml"
        assert [s.id for s in load_adapters()] == ["client-look"]
        assert dict(env.forwarded())["KAMUI_ADAPTERS_CONFIG"] == str(tmp_path / "mine.yaml")  # to serve's replica


def test_an_adapter_of_a_family_without_settings_is_a_config_error(tmp_path):
    path = tmp_path / "adapters.yaml"
    path.write_text("adapters:\n  x: {source: builtin:tiny-style, family: flux1}\n", encoding="utf-8")
    with pytest.raises(ImageGenError) as info:
        load_adapters(path)
    assert info.value.code == "IMG_018" and "give each a budget_gb" in info.value.message


def test_tiny_adapters_are_the_same_bytes_wherever_they_are_built(tmp_path, tiny_models):
    import shutil

    from models.adapter_files import sha256_of
    from models.tiny_adapters import tiny_adapter_file

    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        shutil.copytree(tiny_models["tiny-flux"], root / "tiny" / tiny_models["tiny-flux"].name)
    first, second = (sha256_of(tiny_adapter_file("tiny-style", root)) for root in roots)
    assert first == second


def test_trigger_words_are_added_once():
    from models.adapters import with_trigger_words

    assert with_trigger_words("a cat", ("tinystyle",)) == "a cat, tinystyle"
    assert with_trigger_words("a TinyStyle cat", ("tinystyle",)) == "a TinyStyle cat"


# --- on a resident pipeline --------------------------------------------------------------------

def make_generator(registry, **update):
    from actors.core.diffusers_generator import DiffusersGenerator
    from cluster import env

    spec = registry.get("tiny-flux")
    speed = update.pop("speedups", None)
    if speed is not None:
        from models.registry import SpeedOptions

        update["speedups"] = SpeedOptions(**speed)
    plan = update.pop("memory_plan", None)
    return DiffusersGenerator(spec.model_copy(update=update), env.cache_dir(), "adapter-test", memory_plan=plan)


def task(value: str = "", seed: int = 5, index: int = 0, size: int = 64) -> ImageTask:
    from cluster import env
    from models.adapter_files import resolve

    registry = load_adapters()
    uses = resolve(parse_adapters(value, registry), registry, env.cache_dir())
    return ImageTask(index, "tiny-flux", "a lighthouse at dusk", seed, size, size, 2, 0.0, adapters=uses)


def pixels(result) -> bytes:
    from cluster.output.png import decode

    return decode(result.png).tobytes()


@pytest.fixture(scope="module")
def warm(tiny_models, registry):
    """One resident replica's generator for the tests below, and what its base model makes."""
    generator = make_generator(registry)
    return generator, pixels(generator.generate([task()])[0])


def test_scale_one_changes_the_image_and_scale_zero_is_the_base_model_exactly(warm):
    generator, base = warm
    styled = pixels(generator.generate([task("tiny-style:1")])[0])
    off = pixels(generator.generate([task("tiny-style:0")])[0])
    difference = np.abs(np.frombuffer(styled, np.uint8).astype(int) - np.frombuffer(base, np.uint8)).mean()
    assert difference > 5  # of 255: visibly another look
    assert off == base  # at scale 0 the adapter (and its trigger word) changes nothing


def test_after_an_adapter_a_call_without_one_is_a_fresh_replicas_image(warm, registry):
    generator, _ = warm
    generator.generate([task("tiny-style:1,tiny-grain:0.5")])
    after = pixels(generator.generate([task(seed=9)])[0])
    fresh = pixels(make_generator(registry).generate([task(seed=9)])[0])
    assert after == fresh


def test_a_switch_loads_no_model_and_is_recorded(warm):
    generator, _ = warm
    pipe = generator.pipe
    first = generator.generate([task("tiny-style")])[0]
    second = generator.generate([task("tiny-grain")])[0]
    again = generator.generate([task("tiny-style")])[0]
    assert generator.pipe is pipe  # the same resident pipeline throughout
    assert second.extra["adapter_switch_seconds"] > 0 and again.extra["adapters_loaded"] == []
    assert again.extra["adapter_load_seconds"] == 0.0  # kept loaded: switching back reads nothing
    assert pixels(again) == pixels(first)
    stats = generator.adapters.stats()
    assert set(stats["loaded"]) == {"tiny-style", "tiny-grain"} and stats["last_switch"]["changed"]


def test_a_batch_of_two_images_is_the_images_made_alone(warm):
    generator, _ = warm
    batch = generator.generate([task("tiny-style", seed=3), task("tiny-style", seed=4, index=1)])
    alone = [generator.generate([task("tiny-style", seed=s)])[0] for s in (3, 4)]
    assert [pixels(r) for r in batch] == [pixels(r) for r in alone]
    with pytest.raises(ValueError, match="adapters"):
        generator.generate([task("tiny-style"), task("tiny-grain", index=1)])


def test_beyond_the_budget_the_least_recently_used_adapter_is_unloaded(tiny_models, registry):
    generator = make_generator(registry)
    style = pixels(generator.generate([task("tiny-style")])[0])
    one = generator.adapters.stats()["bytes"]
    generator.adapters.budget_bytes = one + 1  # room for tiny-style alone, so for one of the two
    generator.generate([task("tiny-grain")])
    assert generator.adapters.stats()["loaded"] == ["tiny-grain"]
    assert not any("tiny_style" in name for name, _ in generator.pipe.transformer.named_parameters())
    again = generator.generate([task("tiny-style")])[0]
    assert again.extra["adapters_loaded"] == ["tiny-style"] and pixels(again) == style


def test_a_replica_storing_weights_in_fp8_refuses_adapters(tiny_models, registry):
    from cluster.planning.memory.planner import MemoryPlan

    generator = make_generator(registry, memory_plan=MemoryPlan("fp8-storage", fp8=True))
    with pytest.raises(ImageGenError) as info:
        generator.generate([task("tiny-style")])
    assert info.value.code == "IMG_031" and "float8" in info.value.message


def test_group_offload_and_int8_quantization_apply_adapters(tiny_models, registry, warm):
    from cluster.planning.memory.planner import MemoryPlan

    reference, _ = warm
    styled = np.frombuffer(pixels(reference.generate([task("tiny-style")])[0]), np.uint8).astype(int)
    grouped = make_generator(registry, memory_plan=MemoryPlan("group-offload"))
    assert pixels(grouped.generate([task("tiny-style")])[0]) == styled.astype(np.uint8).tobytes()
    quantized = make_generator(registry, speedups={"compile": "off", "quantize": "int8"})
    base = np.frombuffer(pixels(quantized.generate([task()])[0]), np.uint8).astype(int)
    adapted = np.frombuffer(pixels(quantized.generate([task("tiny-style")])[0]), np.uint8).astype(int)
    # int8 moves pixels by its rounding only; the adapter's change is the full-precision one
    assert np.abs(adapted - styled).mean() < 1 and np.abs(adapted - base).mean() > 5


def test_a_compiled_replica_hot_swaps_adapters_without_recompiling(tiny_models, registry, warm):
    import torch

    reference, base = warm
    compiled = make_generator(registry, speedups={"compile": "on", "quantize": "none"})
    assert compiled.adapters.stats()["hotswap_slots"] == 2
    expected = {value: np.frombuffer(pixels(reference.generate([task(value)])[0]), np.uint8).astype(int)
                for value in ("tiny-style", "tiny-grain:0.7,tiny-style:0.5")}
    with torch.compiler.set_stance("fail_on_recompile"):  # any recompile raises
        made = {value: compiled.generate([task(value)])[0] for value in ("tiny-style", "tiny-grain:0.7,tiny-style:0.5")}
        back = compiled.generate([task()])[0]
        with pytest.raises(Exception, match="(?i)recompil"):  # the stance does catch a recompile
            compiled.generate([task(size=96)])
    for value, result in made.items():
        assert np.abs(np.frombuffer(pixels(result), np.uint8).astype(int) - expected[value]).mean() < 0.5
    assert np.abs(np.frombuffer(pixels(back), np.uint8).astype(int) - np.frombuffer(base, np.uint8)).mean() < 0.5
    assert compiled.adapters.stats()["switches"] == 3
