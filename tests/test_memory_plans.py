"""Memory plans: FLUX.1's real component sizes against the cards people have, the plans carried
out on tiny-flux on the CPU, prompt embeddings reused, plans chosen by the scheduler on logical
GPUs, and `--dry-run`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.errors import ImageGenError
from actors.core.meta_count import count_on_meta
from cluster.planning.memory.architectures import load_architecture
from cluster.planning.memory.planner import PLAN_NAMES, MemoryPlan, Need, candidates, choose
from cluster.planning.memory.sizes import architecture_sizes, safetensors_sizes, weights_sizes
from models.hub_cli import hub_command
from models.registry import MemoryPlanName

GIB = 2**30


@pytest.mark.parametrize("name", ["flux1-schnell", "flux1-dev"])
def test_architecture_sizes_are_what_its_configs_build(name):
    arch = load_architecture(name)
    assert count_on_meta(arch) == arch.sizes
    if name == "flux1-schnell":  # the published figures: a 12B transformer and T5-XXL's 4.7B encoder
        assert round(arch.sizes["transformer"].params / 1e9, 1) == 11.9
        assert round(arch.sizes["text_encoder_2"].params / 1e9, 2) == 4.76


def test_the_plan_names_of_models_yaml_are_the_planners():
    assert MemoryPlanName.__args__ == ("auto", *PLAN_NAMES)


# FLUX.1-schnell at 1024x1024: (card GiB, host GiB, batch) -> (plan, footprint GiB); None: nothing fits.
FLUX_TABLE = [
    (8, 16, 1, None, None), (8, 16, 4, None, None),
    (12, 16, 1, None, None), (12, 16, 4, None, None),
    (16, 16, 1, None, None), (16, 16, 4, None, None),
    (24, 16, 1, None, None), (24, 16, 4, None, None),
    (40, 16, 1, "resident", 35.0), (40, 16, 4, "resident + vae-slicing", 36.5),
    (48, 16, 1, "resident", 35.0), (48, 16, 4, "resident", 42.5),
    (80, 16, 1, "resident", 35.0), (80, 16, 4, "resident", 42.5),
    (141, 16, 1, "resident", 35.0), (141, 16, 4, "resident", 42.5),
    (8, 32, 1, None, None), (8, 32, 4, None, None),
    (12, 32, 1, None, None), (12, 32, 4, None, None),
    (16, 32, 1, None, None), (16, 32, 4, None, None),
    (24, 32, 1, "fp8-storage", 23.4), (24, 32, 4, "model-offload + fp8", 19.1),
    (40, 32, 1, "resident", 35.0), (40, 32, 4, "resident + vae-slicing", 36.5),
    (48, 32, 1, "resident", 35.0), (48, 32, 4, "resident", 42.5),
    (80, 32, 1, "resident", 35.0), (80, 32, 4, "resident", 42.5),
    (141, 32, 1, "resident", 35.0), (141, 32, 4, "resident", 42.5),
    (8, 64, 1, "group-offload", 3.7), (8, 64, 4, "group-offload + vae-slicing", 6.4),
    (12, 64, 1, "group-offload", 3.7), (12, 64, 4, "group-offload", 11.2),
    (16, 64, 1, "group-offload", 3.7), (16, 64, 4, "group-offload", 11.2),
    (24, 64, 1, "fp8-storage", 23.4), (24, 64, 4, "model-offload + fp8", 19.1),
    (40, 64, 1, "resident", 35.0), (40, 64, 4, "resident + vae-slicing", 36.5),
    (48, 64, 1, "resident", 35.0), (48, 64, 4, "resident", 42.5),
    (80, 64, 1, "resident", 35.0), (80, 64, 4, "resident", 42.5),
    (141, 64, 1, "resident", 35.0), (141, 64, 4, "resident", 42.5),
]


@pytest.mark.parametrize("card, host, batch, label, footprint", FLUX_TABLE)
def test_flux_schnell_on_every_card(card, host, batch, label, footprint):
    sizes = architecture_sizes("flux1-schnell")
    need = Need(card, host, batch)
    choice = choose(sizes, need)
    assert (choice.plan.label if choice.plan else None, choice.plan.gpu_gb if choice.plan else None) == (label, footprint)
    every = candidates(sizes, need)
    fits = [p for p in every if p.gpu_gb <= card and p.host_gb <= host]
    if choice.plan is None:  # nothing that fits is refused
        assert not fits
    else:  # nothing that cannot fit is accepted, and no better plan fitted
        assert choice.plan.gpu_gb <= card and choice.plan.host_gb <= host
        assert every.index(next(p for p in every if p.label == choice.plan.label)) == every.index(fits[0])


def test_fp8_saves_a_byte_per_cast_parameter_and_offload_keeps_weights_in_host_ram():
    from cluster.planning.memory.planner import weights_gb

    sizes = architecture_sizes("flux1-schnell")
    need = Need(80, 64, 1)
    by = {p.label: p for p in candidates(sizes, need)}
    weights_bf16 = sum(c.params for c in sizes.components) * 2 / GIB
    assert by["resident"].gpu_gb > weights_bf16 > by["fp8-storage"].gpu_gb
    transformer, t5 = sizes.components[0], sizes.components[1]
    # the counted figures: the modulation layers stay bf16 (27.3%), T5's `wo` too (21.1%)
    assert round(weights_gb(transformer, 2, fp8=True), 1) == 14.1 and round(weights_gb(t5, 2, fp8=True), 2) == 5.37
    saved = by["resident"].gpu_gb - by["fp8-storage"].gpu_gb
    cast = (transformer.params - transformer.fp8_kept + t5.params - t5.fp8_kept) / GIB
    assert abs(saved - cast) <= 0.1  # one byte per cast parameter (footprints round up to 0.1 GiB)
    assert by["model-offload"].host_gb > weights_bf16 > by["model-offload + fp8"].host_gb
    assert by["group-offload"].gpu_gb < by["model-offload"].gpu_gb < by["resident"].gpu_gb


def test_a_forced_plan_that_does_not_fit_names_every_plan():
    from cluster.planning.memory.replica_plan import plan_replica
    from cluster.planning.placement import NodeCapacity
    from models.registry import ModelSpec

    spec = ModelSpec(id="flux", backend="custom", factory="m:f", architecture="flux1-schnell", memory_plan="resident",
                     max_batch_size=4)
    node = NodeCapacity("n", "n", 8, 1, 24, 64 * GIB, 8 * GIB)  # Ray lets a replica reserve 64 GiB
    with pytest.raises(ImageGenError) as info:
        plan_replica(spec, [node], None, 1024, 1024, 4)
    message = info.value.message
    assert info.value.code == "IMG_010" and "memory plan 'resident'" in message and "24 GiB card" in message
    assert "resident 35 GiB GPU" in message and "--memory-plan auto" in message
    assert "Plans that fit: fp8-storage (23.4 GiB); model-offload + fp8 (16.1 GiB)" in message
    spec = spec.model_copy(update={"memory_plan": "auto", "allow_fp8": False})
    plan = plan_replica(spec, [node], None, 1024, 1024, 4)
    assert not plan.fp8 and plan.name == "group-offload"
    assert plan_replica(spec.model_copy(update={"allow_fp8": True}), [node], None, 1024, 1024, 4).name == "fp8-storage"


def test_sizes_from_safetensors_headers(tiny_models):
    folder = tiny_models["tiny-flux"]
    found = {c.name: c for c in weights_sizes(folder)}
    assert set(found) == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    assert found["transformer"].role == "denoiser" and found["vae"].role == "vae"
    from safetensors.torch import load_file

    tensors = load_file(str(next((folder / "transformer").glob("*.safetensors"))))
    assert found["transformer"].params == sum(t.numel() for t in tensors.values())
    assert safetensors_sizes(folder / "transformer")[1] > 0  # its blocks were found


# --- plans carried out on tiny-flux, on the CPU -------------------------------------------------

def make_generator(registry, plan: MemoryPlan):
    from actors.core.diffusers_generator import DiffusersGenerator
    from cluster import env

    return DiffusersGenerator(registry.get("tiny-flux"), env.cache_dir(), "tiny-flux-plan", memory_plan=plan)


def task(index: int, seed: int, prompt: str = "a lighthouse at dusk"):
    from cluster.work import ImageTask

    return ImageTask(index, "tiny-flux", prompt, seed, 64, 64, 2, 0.0)


def pixels(image) -> np.ndarray:
    from cluster.output.png import decode

    return np.asarray(decode(image.png), dtype=float)


@pytest.fixture(scope="module")
def resident_images(tiny_models, registry):
    generator = make_generator(registry, MemoryPlan("resident"))
    return [pixels(i) for i in generator.generate([task(0, 3), task(1, 4)])]


@pytest.mark.parametrize("plan", [MemoryPlan("fp8-storage", fp8=True), MemoryPlan("group-offload"),
                                  MemoryPlan("resident", vae="tiling"), MemoryPlan("group-offload", fp8=True,
                                                                                   vae="slicing")],
                         ids=lambda p: p.label)
def test_cpu_plans_run_tiny_flux_to_finite_images(tiny_models, registry, resident_images, plan):
    generator = make_generator(registry, plan)
    images = generator.generate([task(0, 3), task(1, 4)])
    assert all(i.nonfinite_fraction == 0.0 for i in images)
    made = [pixels(i) for i in images]
    assert all(m.std() > 0 for m in made)
    for mine, reference in zip(made, resident_images):
        difference = np.abs(mine - reference)
        if plan.vae == "tiling":  # tile seams: the decode really went tile by tile
            assert 0 < difference.mean() < 40
        elif plan.fp8:  # weights stored in float8: a small, bounded change (measured: mean 0.3, max 4)
            assert 0 < difference.mean() < 1.0 and difference.max() <= 8
        else:  # offloading moves weights, not values
            assert np.array_equal(mine, reference)
    # what diffusers installed: group-offloading hooks on the offloaded components (never the VAE),
    # layerwise casting on the float8 ones, and the VAE's own slicing and tiling flags
    pipe = generator.pipe
    for name in ("transformer", "text_encoder", "text_encoder_2"):
        component = getattr(pipe, name)
        assert (hooked(component, "group_offloading") > 0) == (plan.offload == "group"), name
        assert (hooked(component, "layerwise_casting") > 0) == plan.fp8, name
    assert hooked(pipe.vae, "group_offloading") == 0
    assert (pipe.vae.use_slicing, pipe.vae.use_tiling) == (plan.vae in ("slicing", "tiling"), plan.vae == "tiling")
    transformer = generator.pipe.transformer
    stored = sum(p.numel() * p.element_size() for p in transformer.parameters())
    full = sum(p.numel() for p in transformer.parameters()) * 4  # float32 on the CPU
    if plan.fp8:  # float8 storage: under half of what the compute dtype would take
        assert stored < 0.5 * full
    else:
        assert stored == full


def hooked(module, hook: str) -> int:
    """Submodules of `module` carrying diffusers' hook named `hook`."""
    return sum(1 for m in module.modules()
               if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(hook) is not None)


def test_group_offload_holds_t5_and_clip_a_block_at_a_time(tiny_models, registry):
    """diffusers groups a component's direct lists of blocks only: T5's sit at encoder.block, and
    without naming `encoder` the whole encoder was one group (T5-XXL: 8.9 GiB on the card at once)."""
    generator = make_generator(registry, MemoryPlan("group-offload"))
    pipe = generator.pipe

    def group_of(module):
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("group_offloading") if registry is not None else None
        return getattr(hook, "group", None)

    for blocks in (pipe.text_encoder_2.encoder.block, pipe.transformer.transformer_blocks,
                   pipe.transformer.single_transformer_blocks):
        for block in blocks:
            assert group_of(block) is not None and group_of(block).modules == [block]
    assert all(i.nonfinite_fraction == 0.0 for i in generator.generate([task(0, 3)]))


@pytest.mark.parametrize("name", ["model-offload", "sequential-offload"])
def test_plans_that_need_cuda_say_so_on_the_cpu(tiny_models, registry, name):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the plan runs")
    with pytest.raises(ImageGenError) as info:
        make_generator(registry, MemoryPlan(name))
    assert info.value.code == "IMG_010" and "needs a CUDA device" in info.value.message


def test_each_prompt_is_encoded_once_per_replica(tiny_models, registry):
    generator = make_generator(registry, MemoryPlan("resident"))
    t5_forwards = []
    generator.pipe.text_encoder_2.register_forward_hook(lambda *args: t5_forwards.append(1))
    prompts = ["a lighthouse at dusk", "a fox in the snow"]
    calls = [[task(i, i, prompts[i % 2]) for i in range(start, start + 2)] for start in range(0, 10, 2)]
    made = [image for call in calls for image in generator.generate(call)]
    assert len(made) == 10 and generator.text_encodes == 2 and len(t5_forwards) == 2
    # what the cache holds is what the planner counts on the card for it
    from cluster.planning.memory.architectures import Activations
    from cluster.planning.memory.planner import PROMPT_CACHE_ENTRIES, prompt_cache_gb
    from cluster.planning.memory.sizes import ModelSizes

    held = sum(t.numel() * t.element_size() for entry in generator._embeddings.values() for t in entry)
    t5 = generator.pipe.text_encoder_2.config
    tiny = ModelSizes((), Activations(denoiser_gb_per_image=0, vae_decode_gb_per_image=0, prompt_tokens=32,
                                      prompt_width=t5.d_model, pooled_width=generator.pipe.text_encoder.config.projection_dim),
                      "tiny", dtype_bytes=4)
    assert prompt_cache_gb(tiny) * GIB == held / len(generator._embeddings) * PROMPT_CACHE_ENTRIES
    assert round(prompt_cache_gb(architecture_sizes("flux1-schnell")), 2) == 0.25
    # the cached embeddings give what the pipeline makes from the prompt itself
    import torch

    direct = generator.pipe(prompt=[prompts[0]], height=64, width=64, num_inference_steps=2, guidance_scale=0.0,
                            generator=[torch.Generator("cpu").manual_seed(0)], output_type="np",
                            max_sequence_length=32).images[0]
    expected = (np.nan_to_num(direct).clip(0, 1) * 255).round()
    assert np.abs(pixels(made[0]) - expected).max() <= 1


# --- chosen by the scheduler, on the session's logical 24 GB cards -------------------------------

def flux_sized(tmp_path, **fields):
    from tests.helpers import scripted_registry

    entry = {"architecture": "flux1-schnell", "gpus": 1, "gpu_memory_gb": 34, "width": 1024, "height": 1024,
             "max_batch_size": 4, "script": {"latency": 0.05}}
    entry.update(fields)
    return scripted_registry(tmp_path, {"flux": entry})


@pytest.mark.usefixtures("ray_session")
def test_a_flux_sized_model_places_on_a_24_gb_card_with_a_non_resident_plan(tmp_path):
    from cluster.pipeline.run import run_generation
    from tests.helpers import make_request, quick_limits, read_json

    registry = flux_sized(tmp_path)
    request = make_request(registry, tmp_path, models="flux", image_count=1, width=64, height=64, scorer="none")
    result = run_generation(request, registry, quick_limits())
    assert result.exit_code == 0, result.outcome.error
    (replica,) = read_json(tmp_path / "out/metadata/generation-report.json")["models"]["flux"]["replicas"]
    plan = replica["memory_plan"]
    assert plan["name"] == "fp8-storage" and plan["footprint_gb"] <= 24 and "resident does not fit" in plan["reason"]
    (event,) = result.events.of("memory_plan")
    assert event["plan"] == "fp8-storage" and event["footprint_gb"] == plan["footprint_gb"]


@pytest.mark.usefixtures("ray_session")
def test_resident_forced_on_a_24_gb_card_is_img_010_naming_the_plans_that_fit(tmp_path):
    from cluster.pipeline.run import run_generation
    from tests.helpers import make_request, quick_limits

    registry = flux_sized(tmp_path)
    request = make_request(registry, tmp_path, models="flux", width=64, height=64, scorer="none",
                           memory_plan="resident")
    with pytest.raises(ImageGenError) as refused:  # refused before anything is written
        run_generation(request, registry, quick_limits())
    message = refused.value.message
    assert refused.value.code == "IMG_010" and "resident" in message and "fp8-storage" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("ray_session")
def test_two_12_gb_footprints_share_one_24_gb_card(tmp_path):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from cluster.pipeline.run import run_generation
    from tests.helpers import make_request, quick_limits, read_json, scripted_registry

    other_card = placement_group([{"GPU": 1, "gpu_memory_gb": 24}])  # another job holds one card
    assert other_card.wait(timeout_seconds=30)
    try:
        registry = scripted_registry(tmp_path, {
            name: {"gpus": 1, "gpu_memory_gb": 12, "script": {"latency": 0.3}} for name in ("left", "right")})
        request = make_request(registry, tmp_path, models="left,right", scorer="none", max_parallel=2)
        result = run_generation(request, registry, quick_limits())
        assert result.exit_code == 0 and len(result.outcome.images) == 2
        report = read_json(tmp_path / "out/metadata/generation-report.json")
        gpus = {m: v["replicas"][0]["gpu_ids"] for m, v in report["models"].items()}
        assert gpus["left"] == gpus["right"]  # both on the one card left
        assert {v["replicas"][0]["memory_plan"]["footprint_gb"] for v in report["models"].values()} == {12}
    finally:
        remove_placement_group(other_card)
        ray.available_resources()


# --- dry run ------------------------------------------------------------------------------------

def dry(capsys, *args: str) -> tuple[int, dict]:
    from cluster.entrypoints.cli import main

    code = main(["generate", "--image-prompt", "a lighthouse", "--folder-name", "never", "--dry-run", "--json", *args])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_dry_run_answers_will_flux_fit_my_card_without_weights(tmp_path, capsys):
    code, result = dry(capsys, "--models", "flux-schnell", "--image-count", "2", "--card-memory", "24",
                       "--host-memory", "64")
    assert code == 0 and result["ok"] is True
    (model,) = result["models"]
    assert model["available"] is False and f"{hub_command()} download" in model["availability"]
    assert model["sizes_from"] == "architecture: flux1-schnell"
    (kind,) = model["kinds"]
    assert kind["plan"]["name"] == "fp8-storage" and kind["nodes"] == ["a 24 GiB card"]
    assert kind["bundle"]["gpu_memory_gb"] == kind["plan"]["footprint_gb"]
    # what the counted parameters support: the fp8 transformer alone is 14.1 GiB, with T5 (5.37),
    # CLIP-L and the VAE in bf16 19.9 GiB of weights; the batch is the largest that still fits
    plan = kind["plan"]
    assert 19.9 + 1.0 < plan["footprint_gb"] <= 24 and plan["batch"] == 1
    assert not (tmp_path / "never").exists()  # nothing written


def test_dry_run_on_a_card_too_small_exits_1_with_every_plan(tmp_path, capsys):
    code, result = dry(capsys, "--models", "flux-schnell", "--card-memory", "8", "--host-memory", "16")
    assert code == 1 and result["ok"] is False
    (kind,) = result["models"][0]["kinds"]
    assert kind["code"] == "IMG_010" and "group-offload" in kind["message"] and "host RAM" in kind["message"]


@pytest.mark.parametrize("args, code", [(["--card-memory", "-3"], "IMG_028"), (["--memory-plan", "swap"], "IMG_028"),
                                        (["--host-memory", "16"], "IMG_011")])
def test_dry_run_input_errors(capsys, args, code):
    from cluster.entrypoints.cli import main

    status = main(["generate", "--image-prompt", "a lighthouse", "--folder-name", "never", "--models", "tiny-flux",
                   "--dry-run", *args])
    assert status == 2 and f"error {code}" in capsys.readouterr().err


# --- random-weight architectures, built on meta and made a layer at a time ----------------------

def tiny_architecture():
    """FLUX.1's components with tiny-flux's shapes (real vocabularies), as an architecture file gives them."""
    from cluster.planning.memory.architectures import Architecture

    flux = load_architecture("flux1-schnell")
    configs = {
        "transformer": dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                            axes_dims_rope=[4, 4, 8]),
        "text_encoder_2": dict(vocab_size=32128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                               feed_forward_proj="gated-gelu", is_gated_act=True, dense_act_fn="gelu_new"),
        "text_encoder": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                             projection_dim=32, vocab_size=49408, max_position_embeddings=77),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=1, block_out_channels=[4, 4, 4, 4],
                    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                    layers_per_block=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                    scaling_factor=1.5035, shift_factor=0.0609),
    }
    components = {name: flux.components[name].model_copy(update={"config": config}) for name, config in configs.items()}
    return Architecture(name="tiny", pipeline="FluxPipeline", dtype_bytes=4, components=components,
                        activations=flux.activations, sizes={})


def test_a_random_weight_architecture_is_cast_on_meta_and_made_layer_by_layer():
    """An fp8 plan's random-weight FLUX: each component cast while it is still on the meta device,
    then made a layer at a time in its storage dtypes, so the card never holds the bf16
    transformer beside T5 (23+ GiB on a 24 GiB card)."""
    import torch

    from actors.core.memory_apply import cast_to_fp8
    from actors.core.meta_count import count_on_meta
    from models.real_size import build_arch_pipeline

    arch = tiny_architecture()
    devices = {}

    def cast(name, module):
        devices[name] = {p.device.type for p in module.parameters()}
        if name in ("transformer", "text_encoder_2"):
            cast_to_fp8(module, torch.float32, torch)

    pipe = build_arch_pipeline(arch, "cpu", torch.float32, torch, cast=cast)
    assert devices["transformer"] == devices["text_encoder_2"] == {"meta"}
    counted = count_on_meta(arch)
    for name in ("transformer", "text_encoder_2"):
        params = list(getattr(pipe, name).parameters())
        assert {p.device.type for p in params} == {"cpu"}
        kept = sum(p.numel() for p in params if p.dtype != torch.float8_e4m3fn)
        assert 0 < kept < sum(p.numel() for p in params) and kept == counted[name].fp8_kept  # as the planner counts
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt="a lighthouse", height=64, width=64, num_inference_steps=2, guidance_scale=0.0,
                  max_sequence_length=32, output_type="np", generator=torch.Generator("cpu").manual_seed(0)).images
    assert np.isfinite(images).all() and images.std() > 0
